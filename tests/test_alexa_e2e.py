"""The demo assistant behind ``rasa run`` (a subprocess) with the REST and Alexa channels.

Talks to the session's ``demo_server`` (tests/conftest.py: the demo model, trained once per
session with the small pre-trained HRED, behind ``rasa run`` with a credentials file that
names ``alexa_connector.AlexaConnector`` trusting the throw-away test PKI) with signed
requests built from ask-sdk-model's typed envelopes.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from support.alexa_pki import CERT_URL, SKILL_ID, USER_ID, make_pki, sign

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- envelopes


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def envelope(request: Any, *, new: bool = False) -> bytes:
    """A request envelope as Alexa sends it, built from ask-sdk-model's types."""
    from ask_sdk_core.serialize import DefaultSerializer
    from ask_sdk_model import Application, Context, RequestEnvelope, Session, User
    from ask_sdk_model.interfaces.system import SystemState

    application = Application(application_id=SKILL_ID)
    user = User(user_id=USER_ID)
    model = RequestEnvelope(
        version="1.0",
        session=Session(
            new=new,
            session_id="amzn1.echo-api.session.e2e",
            application=application,
            user=user,
            attributes={},
        ),
        context=Context(system=SystemState(application=application, user=user)),
        request=request,
    )
    return json.dumps(DefaultSerializer().serialize(model)).encode("utf-8")


def _request_id() -> str:
    return f"amzn1.echo-api.request.{uuid.uuid4()}"


def launch() -> bytes:
    from ask_sdk_model import LaunchRequest

    return envelope(
        LaunchRequest(request_id=_request_id(), timestamp=_now(), locale="en-US"), new=True
    )


def said(text: str) -> bytes:
    from ask_sdk_model import Intent, IntentRequest, Slot

    intent = Intent(name="CatchAllIntent", slots={"text": Slot(name="text", value=text)})
    return envelope(
        IntentRequest(request_id=_request_id(), timestamp=_now(), locale="en-US", intent=intent)
    )


def session_ended() -> bytes:
    from ask_sdk_model import SessionEndedReason, SessionEndedRequest

    return envelope(
        SessionEndedRequest(
            request_id=_request_id(),
            timestamp=_now(),
            locale="en-US",
            reason=SessionEndedReason.USER_INITIATED,
        )
    )


def post(base_url: str, body: bytes, key: Any) -> requests.Response:
    headers = {
        "Content-Type": "application/json",
        "SignatureCertChainUrl": CERT_URL,
        "Signature-256": sign(body, key),
    }
    return requests.post(
        f"{base_url}/webhooks/alexa/webhook", data=body, headers=headers, timeout=30
    )


def speech(reply: requests.Response) -> str:
    assert reply.status_code == 200, reply.text
    from xml.etree import ElementTree

    ssml = reply.json()["response"]["outputSpeech"]["ssml"]
    return "".join(ElementTree.fromstring(ssml).itertext())


# --------------------------------------------------------------------------- the test


def test_demo_assistant_on_alexa_and_rest(demo_server, alexa_pki):
    base_url, pki = demo_server, alexa_pki
    from rasa.shared.core.domain import Domain

    from alexa_connector.settings import AlexaSettings

    domain = Domain.load(str(ROOT / "domain.yml"))
    greetings = domain.responses["utter_greet"]
    alexa_greetings = {r["text"] for r in greetings if r.get("channel") == "alexa"}
    plain_greetings = {r["text"] for r in greetings if not r.get("channel")}
    assert alexa_greetings and plain_greetings

    assert requests.get(f"{base_url}/webhooks/alexa/", timeout=10).json() == {"status": "ok"}

    reply = post(base_url, launch(), pki.leaf_key)
    assert speech(reply) == AlexaSettings().launch_message
    assert reply.json()["response"]["shouldEndSession"] is False

    # The demo's greeting has a `channel: alexa` variation; Alexa hears it.
    reply = post(base_url, said("hello there"), pki.leaf_key)
    assert speech(reply) in alexa_greetings
    assert reply.json()["response"]["reprompt"]["outputSpeech"]["type"] == "SSML"

    # Chit-chat: the HRED policy (or its fallback response) answers; Alexa hears it.
    reply = post(base_url, said("what's the best movie you have ever seen"), pki.leaf_key)
    chat = speech(reply)
    assert chat.strip()
    assert chat not in (AlexaSettings().timeout_message, AlexaSettings().fallback_message)

    # A forged request never reaches the bot.
    body = said("hello there")
    forged = post(base_url, body, make_pki(keys="e2e-forger").leaf_key)
    assert forged.status_code == 400
    assert "signature" in forged.json()["error"]

    reply = post(base_url, session_ended(), pki.leaf_key)
    assert reply.status_code == 200
    assert reply.json() == {"version": "1.0", "response": {}}

    # The REST channel of the same server still gets the ordinary variation.
    rest = requests.post(
        f"{base_url}/webhooks/rest/webhook",
        json={"sender": "rest-user", "message": "hello there"},
        timeout=30,
    )
    assert rest.status_code == 200
    assert rest.json()[0]["text"] in plain_greetings
