"""The Alexa input channel end to end: a real Sanic server on 127.0.0.1, real HTTP requests
(aiohttp), real request signatures (tests/support/alexa_pki.py) and a real Rasa bot behind it.

The bot is a tiny Rasa assistant trained once per test session (keyword intents and rules,
a few seconds). The channel is mounted exactly as ``rasa run`` mounts input channels
(``rasa.core.channels.channel.register`` under ``/webhooks/``), with ``app.ctx.agent``
being the Rasa ``Agent`` behind a thin wrapper that counts the messages it is given.

The hostile-input tests need no trained bot (nothing they send may reach it): oversized and
lying bodies over raw sockets, and a flood of forged requests against a loopback stand-in for
Amazon's certificate server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import socket
import textwrap
import threading
import time
import tracemalloc
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from support.alexa_pki import (
    CERT_URL,
    SKILL_ID,
    USER_ID,
    LoopbackVerifier,
    alexa_request,
    chain_server,
    make_pki,
    sign,
    write_chain_cache,
)
from support.servers import running

from alexa_connector.channel import MAX_BODY_BYTES, AlexaConnector, AlexaOutputChannel
from alexa_connector.settings import AlexaConfigurationError, AlexaSettings
from alexa_connector.turns import BUTTONS_ATTRIBUTE
from alexa_connector.verification import MAX_CONCURRENT_DOWNLOADS

ROOT = Path(__file__).resolve().parent.parent
INTERACTION_MODEL = ROOT / "skill-package" / "interactionModels" / "custom" / "en-US.json"
SKILL_MANIFEST = ROOT / "skill-package" / "skill.json"
BREAK = '<break strength="strong"/>'
OTHER_USER = "amzn1.ask.account.AHOTHERUSER7Q2ZJ7V3N5KXW4MBRPLC6Y"

# --------------------------------------------------------------------------- the test bot

BOT_CONFIG = """
recipe: default.v1
language: en
assistant_id: alexa-channel-test
pipeline:
  - name: WhitespaceTokenizer
  - name: KeywordIntentClassifier
policies:
  - name: RulePolicy
"""

BOT_DOMAIN = """
version: "3.1"
intents: [greet, symbols, channel_check, options, pick_comedy, pick_drama, picture, helpme]
responses:
  utter_greet:
    - text: "Hello there!"
  utter_ask_mood:
    - text: "How are you doing?"
  utter_symbols:
    - text: "Tom & Jerry <3 \\"quotes\\" 'apostrophes' > everything"
  utter_channel:
    - text: "generic reply"
    - channel: alexa
      text: "alexa reply"
  utter_options:
    - text: "Which genre?"
      buttons:
        - title: "Comedy"
          payload: "/pick_comedy"
        - title: "Drama"
          payload: "/pick_drama"
  utter_comedy:
    - text: "Comedy it is."
  utter_drama:
    - text: "Drama it is."
  utter_picture:
    - custom:
        poster: "https://example.com/poster.png"
  utter_help:
    - text: "The bot's own help."
  utter_default:
    - text: "Sorry, I did not get that."
session_config:
  session_expiration_time: 60
  carry_over_slots_to_new_session: true
"""

BOT_DATA = """
version: "3.1"
nlu:
  - intent: greet
    examples: |
      - hello
      - hi
  - intent: symbols
    examples: |
      - symbols
      - ampersand
  - intent: channel_check
    examples: |
      - channel
      - variation
  - intent: options
    examples: |
      - options
      - choices
  - intent: pick_comedy
    examples: |
      - laughs
      - giggles
  - intent: pick_drama
    examples: |
      - tears
      - sobbing
  - intent: picture
    examples: |
      - picture
      - photo
  - intent: helpme
    examples: |
      - assistance
      - support
rules:
  - rule: greet
    steps:
      - intent: greet
      - action: utter_greet
      - action: utter_ask_mood
  - rule: symbols
    steps:
      - intent: symbols
      - action: utter_symbols
  - rule: channel
    steps:
      - intent: channel_check
      - action: utter_channel
  - rule: options
    steps:
      - intent: options
      - action: utter_options
  - rule: comedy
    steps:
      - intent: pick_comedy
      - action: utter_comedy
  - rule: drama
    steps:
      - intent: pick_drama
      - action: utter_drama
  - rule: picture
    steps:
      - intent: picture
      - action: utter_picture
  - rule: help
    steps:
      - intent: helpme
      - action: utter_help
"""


@pytest.fixture(scope="session")
def trained_bot(tmp_path_factory) -> str:
    """Train the tiny bot once per session; the model archive's path."""
    from rasa.model_training import train

    directory = tmp_path_factory.mktemp("alexa_bot")
    for name, content in (
        ("config.yml", BOT_CONFIG),
        ("domain.yml", BOT_DOMAIN),
        ("data.yml", BOT_DATA),
    ):
        (directory / name).write_text(textwrap.dedent(content).lstrip())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RASA_TELEMETRY_ENABLED", "false")
        patch.setenv("RASA_CACHE_DIRECTORY", str(directory / "cache"))
        result = train(
            str(directory / "domain.yml"),
            str(directory / "config.yml"),
            [str(directory / "data.yml")],
            output=str(directory / "models"),
        )
    assert result.code == 0 and result.model, result
    return result.model


class CountingAgent:
    """The Rasa ``Agent`` as ``rasa run`` uses it (``app.ctx.agent``), counting the
    messages it is given; ``delay`` seconds pass before each message is handled."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.messages: list[Any] = []
        self.delay = 0.0
        self.fail = False

    async def handle_message(self, message: Any) -> Any:
        self.messages.append(message)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("the bot broke")
        return await self.agent.handle_message(message)

    @property
    def texts(self) -> list[str]:
        return [message.text for message in self.messages]

    async def tracker(self, sender_id: str) -> Any:
        return await self.agent.tracker_store.retrieve_full_tracker(sender_id)


@pytest.fixture
def bot(trained_bot) -> CountingAgent:
    """A freshly loaded agent (its own in-memory tracker store) for each test."""
    from rasa.core.agent import Agent

    return CountingAgent(Agent.load(trained_bot))


# --------------------------------------------------------------------------- PKI and server


@pytest.fixture(scope="module")
def pki():
    return make_pki()


@pytest.fixture(scope="module")
def roots_file(pki, tmp_path_factory):
    return pki.write_root(tmp_path_factory.mktemp("alexa_roots") / "roots.pem")


@pytest.fixture
def credentials(pki, roots_file, tmp_path) -> dict[str, Any]:
    cache_dir = tmp_path / "certs"
    write_chain_cache(cache_dir, CERT_URL, pki.chain_pem)
    return {
        "skill_id": SKILL_ID,
        "trusted_roots": str(roots_file),
        "certificate_cache_dir": str(cache_dir),
    }


class AlexaClient:
    """Posts (signed) Alexa requests to a running server."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, pki: Any) -> None:
        self.session = session
        self.base_url = base_url
        self.webhook = f"{base_url}/webhooks/alexa/webhook"
        self.pki = pki

    async def post_raw(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.session.post(self.webhook, data=body, headers=headers or {}) as reply:
            text = await reply.text()
            try:
                return reply.status, json.loads(text)
            except ValueError:
                return reply.status, text

    def signed_headers(self, body: bytes, key: Any = None) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "SignatureCertChainUrl": CERT_URL,
            "Signature-256": sign(body, key or self.pki.leaf_key),
        }

    async def post(self, payload: dict[str, Any], **header_overrides: str) -> tuple[int, Any]:
        body = json.dumps(payload).encode("utf-8")
        headers = self.signed_headers(body)
        headers.update(header_overrides)
        return await self.post_raw(body, headers)

    async def ok(self, payload: dict[str, Any]) -> dict[str, Any]:
        status, reply = await self.post(payload)
        assert status == 200, reply
        return reply


@contextlib.asynccontextmanager
async def serve(connector: AlexaConnector, agent: Any, pki: Any):
    """Run the connector in a real Sanic server on 127.0.0.1 (a free port), mounted the
    way ``rasa run`` mounts input channels."""
    from rasa.core.channels.channel import register
    from sanic import Sanic

    app = Sanic(f"alexa_test_{uuid.uuid4().hex[:12]}", configure_logging=False)
    app.ctx.agent = agent
    register([connector], app, route="/webhooks/")
    async with running(app) as base:
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            yield AlexaClient(session, base, pki)


@pytest.fixture
async def alexa(credentials, bot, pki):
    """A server with the default settings; yields the client."""
    connector = AlexaConnector.from_credentials(credentials)
    async with serve(connector, bot, pki) as client:
        yield client


def spoken(reply: dict[str, Any]) -> str:
    ssml = reply["response"]["outputSpeech"]["ssml"]
    root = ET.fromstring(ssml)  # well-formed XML or this raises
    assert root.tag == "speak"
    return "".join(root.itertext())


def ssml(reply: dict[str, Any]) -> str:
    return reply["response"]["outputSpeech"]["ssml"]


def user_events(tracker: Any) -> list[Any]:
    from rasa.shared.core.events import UserUttered

    return [event for event in tracker.events if isinstance(event, UserUttered)]


def bot_texts(tracker: Any) -> list[str]:
    from rasa.shared.core.events import BotUttered

    return [event.text for event in tracker.events if isinstance(event, BotUttered)]


defaults = AlexaSettings()

# --------------------------------------------------------------------------- accepted requests


@pytest.mark.slow
async def test_health_check(alexa):
    async with alexa.session.get(f"{alexa.base_url}/webhooks/alexa/") as reply:
        assert reply.status == 200
        assert await reply.json() == {"status": "ok"}


@pytest.mark.slow
async def test_launch_request_speaks_the_launch_message(alexa, bot):
    reply = await alexa.ok(alexa_request("LaunchRequest"))
    assert reply["version"] == "1.0"
    assert spoken(reply) == defaults.launch_message
    assert reply["response"]["shouldEndSession"] is False
    assert reply["response"]["reprompt"]["outputSpeech"] == {
        "type": "SSML",
        "ssml": f"<speak>{defaults.reprompt}</speak>",
    }
    assert bot.messages == []


@pytest.mark.slow
async def test_launch_intent_runs_through_the_bot(credentials, bot, pki):
    connector = AlexaConnector.from_credentials({**credentials, "launch_intent": "/greet"})
    async with serve(connector, bot, pki) as alexa:
        reply = await alexa.ok(alexa_request("LaunchRequest"))
    assert ssml(reply) == f"<speak>Hello there!{BREAK}How are you doing?</speak>"
    assert bot.texts == ["/greet"]
    assert bot.messages[0].metadata["alexa"]["request_type"] == "LaunchRequest"


@pytest.mark.slow
async def test_intent_request_goes_to_rasa_and_every_message_is_spoken(alexa, bot):
    request = alexa_request(text="hello", session_id="amzn1.echo-api.session.S1")
    reply = await alexa.ok(request)
    # The rule answers with two consecutive utterances: both are spoken, in order.
    assert ssml(reply) == f"<speak>Hello there!{BREAK}How are you doing?</speak>"
    assert reply["response"]["shouldEndSession"] is False
    assert "reprompt" in reply["response"]

    (message,) = bot.messages
    assert message.text == "hello"
    assert message.sender_id == USER_ID
    assert message.input_channel == "alexa"
    assert isinstance(message.output_channel, AlexaOutputChannel)
    assert message.metadata == {
        "alexa": {
            "request_type": "IntentRequest",
            "request_id": request["request"]["requestId"],
            "session_id": "amzn1.echo-api.session.S1",
            "new_session": False,
            "locale": "en-US",
            "intent": "CatchAllIntent",
        }
    }
    tracker = await bot.tracker(USER_ID)
    (uttered,) = user_events(tracker)
    assert uttered.text == "hello"
    assert uttered.input_channel == "alexa"
    assert uttered.metadata["alexa"]["session_id"] == "amzn1.echo-api.session.S1"
    assert bot_texts(tracker) == ["Hello there!", "How are you doing?"]


@pytest.mark.slow
async def test_ssml_escaping_end_to_end(alexa):
    reply = await alexa.ok(alexa_request(text="symbols"))
    assert ssml(reply) == (
        "<speak>Tom &amp; Jerry &lt;3 &quot;quotes&quot; &apos;apostrophes&apos; "
        "&gt; everything</speak>"
    )
    assert spoken(reply) == """Tom & Jerry <3 "quotes" 'apostrophes' > everything"""


@pytest.mark.slow
async def test_the_alexa_channel_variation_is_used(alexa, bot):
    reply = await alexa.ok(alexa_request(text="channel"))
    assert spoken(reply) == "alexa reply"
    assert bot_texts(await bot.tracker(USER_ID)) == ["alexa reply"]


@pytest.mark.slow
async def test_two_alexa_users_get_separate_trackers(alexa, bot):
    await alexa.ok(alexa_request(text="hello", user_id=USER_ID))
    await alexa.ok(alexa_request(text="symbols", user_id=OTHER_USER))
    await alexa.ok(alexa_request(text="channel", user_id=USER_ID))
    person = alexa_request(text="picture", user_id=USER_ID)
    person["context"]["System"]["person"] = {"personId": "amzn1.ask.person.ALICE"}
    await alexa.ok(person)

    keys = set(await bot.agent.tracker_store.keys())
    assert keys == {USER_ID, OTHER_USER, "amzn1.ask.person.ALICE"}
    first = await bot.tracker(USER_ID)
    second = await bot.tracker(OTHER_USER)
    alice = await bot.tracker("amzn1.ask.person.ALICE")
    assert [event.text for event in user_events(first)] == ["hello", "channel"]
    assert [event.text for event in user_events(second)] == ["symbols"]
    assert [event.text for event in user_events(alice)] == ["picture"]
    assert bot_texts(first) == ["Hello there!", "How are you doing?", "alexa reply"]
    assert bot_texts(second) == ["Tom & Jerry <3 \"quotes\" 'apostrophes' > everything"]


@pytest.mark.slow
@pytest.mark.parametrize("intent", ["AMAZON.StopIntent", "AMAZON.CancelIntent"])
async def test_stop_and_cancel_end_the_session(alexa, bot, intent):
    await alexa.ok(alexa_request(text="hello"))
    reply = await alexa.ok(alexa_request(intent_name=intent, text=None, slot_name=""))
    assert spoken(reply) == defaults.stop_message
    assert reply["response"]["shouldEndSession"] is True
    assert "reprompt" not in reply["response"]
    # Alexa sends no SessionEndedRequest after shouldEndSession: true, so the Rasa
    # conversation gets its new session now.
    assert bot.texts == ["hello", "/session_start"]
    assert await _latest_session_is_empty(bot, USER_ID)


async def _latest_session_is_empty(bot: CountingAgent, sender_id: str) -> bool:
    """The Rasa conversation's latest session has started and holds no user message."""
    from rasa.shared.core.events import SessionStarted

    tracker = await bot.tracker(sender_id)
    starts = [i for i, e in enumerate(tracker.events) if isinstance(e, SessionStarted)]
    assert len(starts) >= 2, tracker.events  # the first session and the new one
    latest = list(tracker.events)[starts[-1] :]
    return not [event for event in latest if type(event).__name__ == "UserUttered"]


@pytest.mark.slow
async def test_session_ended_request_has_no_speech_and_starts_a_new_rasa_session(alexa, bot):
    await alexa.ok(alexa_request(text="hello"))
    reply = await alexa.ok(alexa_request("SessionEndedRequest", reason="USER_INITIATED"))
    assert reply == {"version": "1.0", "response": {}}
    assert bot.texts == ["hello", "/session_start"]
    assert await _latest_session_is_empty(bot, USER_ID)
    # The conversation goes on in the new session; the old one stays in the tracker.
    reply = await alexa.ok(alexa_request(text="channel"))
    assert spoken(reply) == "alexa reply"
    current = await bot.agent.tracker_store.retrieve(USER_ID)
    assert [event.text for event in user_events(current)] == ["channel"]


@pytest.mark.slow
async def test_session_ended_with_an_error_is_answered_too(alexa, bot):
    reply = await alexa.ok(alexa_request("SessionEndedRequest", reason="ERROR"))
    assert reply == {"version": "1.0", "response": {}}


@pytest.mark.slow
async def test_session_end_intent_can_be_switched_off(credentials, bot, pki):
    connector = AlexaConnector.from_credentials({**credentials, "session_end_intent": None})
    async with serve(connector, bot, pki) as alexa:
        reply = await alexa.ok(alexa_request("SessionEndedRequest"))
    assert reply == {"version": "1.0", "response": {}}
    assert bot.messages == []


@pytest.mark.slow
async def test_help_intent_speaks_the_help_message(alexa, bot):
    reply = await alexa.ok(alexa_request(intent_name="AMAZON.HelpIntent", text=None, slot_name=""))
    assert spoken(reply) == defaults.help_message
    assert reply["response"]["shouldEndSession"] is False
    assert bot.messages == []


@pytest.mark.slow
async def test_help_intent_can_run_through_the_bot(credentials, bot, pki):
    connector = AlexaConnector.from_credentials({**credentials, "help_intent": "/helpme"})
    async with serve(connector, bot, pki) as alexa:
        reply = await alexa.ok(alexa_request(intent_name="AMAZON.HelpIntent", text=None))
    assert spoken(reply) == "The bot's own help."
    assert bot.texts == ["/helpme"]


@pytest.mark.slow
@pytest.mark.parametrize("intent", ["AMAZON.FallbackIntent", "AMAZON.NavigateHomeIntent"])
async def test_fallback_intents_run_the_bots_fallback(alexa, bot, intent):
    reply = await alexa.ok(alexa_request(intent_name=intent, text=None, slot_name=""))
    # `/nlu_fallback` has no rule in this bot, so Rasa's core fallback answers with
    # utter_default (in the demo, the HRED policy answers nlu_fallback).
    assert spoken(reply) == "Sorry, I did not get that."
    assert reply["response"]["shouldEndSession"] is False
    assert bot.texts == ["/nlu_fallback"]
    assert bot.messages[0].metadata["alexa"]["intent"] == intent


@pytest.mark.slow
async def test_an_empty_slot_is_not_sent_to_rasa(alexa, bot):
    reply = await alexa.ok(alexa_request(text=None))
    assert spoken(reply) == defaults.unclear_message
    assert reply["response"]["shouldEndSession"] is False
    assert bot.messages == []


@pytest.mark.slow
async def test_an_empty_bot_reply_speaks_the_fallback_message(alexa, bot):
    reply = await alexa.ok(alexa_request(text="picture"))  # the bot sends only a custom payload
    assert spoken(reply) == defaults.fallback_message
    assert reply["response"]["shouldEndSession"] is False
    assert bot.texts == ["picture"]


@pytest.mark.slow
async def test_buttons_are_spoken_and_a_spoken_title_sends_the_payload(alexa, bot):
    first = alexa_request(text="options")
    reply = await alexa.ok(first)
    assert spoken(reply) == "Which genre? You can say: Comedy or Drama."
    choices = reply["sessionAttributes"][BUTTONS_ATTRIBUTE]
    assert choices == [
        {"title": "Comedy", "payload": "/pick_comedy"},
        {"title": "Drama", "payload": "/pick_drama"},
    ]
    # Alexa returns the session attributes with the next request of the session.
    second = alexa_request(text="comedy", session_id=first["session"]["sessionId"])
    second["session"]["attributes"] = {**reply["sessionAttributes"], "other": 1}
    reply = await alexa.ok(second)
    assert spoken(reply) == "Comedy it is."
    assert bot.texts == ["options", "/pick_comedy"]
    # Buttons are forgotten once answered; other attributes are kept.
    assert reply["sessionAttributes"] == {"other": 1}


@pytest.mark.slow
async def test_buttons_survive_help_and_an_empty_slot(alexa, bot):
    first = alexa_request(text="options")
    attributes = (await alexa.ok(first))["sessionAttributes"]
    session_id = first["session"]["sessionId"]
    for request in (
        alexa_request(intent_name="AMAZON.HelpIntent", text=None, session_id=session_id),
        alexa_request(text=None, session_id=session_id),
    ):
        request["session"]["attributes"] = attributes
        reply = await alexa.ok(request)
        assert reply["sessionAttributes"] == attributes
    last = alexa_request(text="Drama", session_id=session_id)
    last["session"]["attributes"] = attributes
    assert spoken(await alexa.ok(last)) == "Drama it is."
    assert bot.texts == ["options", "/pick_drama"]


@pytest.mark.slow
async def test_unknown_request_type_gets_an_empty_answer(alexa, bot, caplog):
    request = alexa_request("LaunchRequest")
    request["request"]["type"] = "Alexa.Presentation.APL.UserEvent"
    with caplog.at_level(logging.INFO, logger="alexa_connector.channel"):
        reply = await alexa.ok(request)
    assert reply == {"version": "1.0", "response": {}}
    assert bot.messages == []
    assert "Alexa.Presentation.APL.UserEvent" in caplog.text


@pytest.mark.slow
async def test_slow_bot_gets_the_timeout_message_and_the_late_reply_is_stored(
    credentials, bot, pki
):
    connector = AlexaConnector.from_credentials({**credentials, "reply_timeout": 0.2})
    bot.delay = 0.6
    async with serve(connector, bot, pki) as alexa:
        started = time.monotonic()
        reply = await alexa.ok(alexa_request(text="hello"))
        assert time.monotonic() - started < 0.6
        assert spoken(reply) == defaults.timeout_message
        assert reply["response"]["shouldEndSession"] is False
        assert connector.pending == 1
        # The turn finishes in the background and lands in the tracker.
        assert await connector.wait_for_pending(timeout=10)
        assert connector.pending == 0
        tracker = await bot.tracker(USER_ID)
        assert [event.text for event in user_events(tracker)] == ["hello"]
        assert bot_texts(tracker) == ["Hello there!", "How are you doing?"]
        # The next turn is answered normally.
        bot.delay = 0
        assert spoken(await alexa.ok(alexa_request(text="channel"))) == "alexa reply"


@pytest.mark.slow
async def test_server_stop_waits_for_late_turns(credentials, bot, pki):
    connector = AlexaConnector.from_credentials({**credentials, "reply_timeout": 0.1})
    bot.delay = 0.4
    async with serve(connector, bot, pki) as alexa:
        reply = await alexa.ok(alexa_request(text="hello"))
        assert spoken(reply) == defaults.timeout_message
    # The server's before_server_stop listener waited for the turn.
    assert connector.pending == 0
    assert [event.text for event in user_events(await bot.tracker(USER_ID))] == ["hello"]


@pytest.mark.slow
async def test_a_failing_bot_is_answered_with_the_fallback_not_a_500(alexa, bot, caplog):
    bot.fail = True
    with caplog.at_level(logging.ERROR, logger="alexa_connector.channel"):
        reply = await alexa.ok(alexa_request(text="hello"))
    assert spoken(reply) == defaults.fallback_message
    assert "the bot broke" in caplog.text


@pytest.mark.slow
async def test_custom_messages_and_no_reprompt(credentials, bot, pki):
    connector = AlexaConnector.from_credentials(
        {
            **credentials,
            "launch_message": "Welcome & hello.",
            "reprompt": None,
            "stop_message": "Ciao.",
        }
    )
    async with serve(connector, bot, pki) as alexa:
        launch = await alexa.ok(alexa_request("LaunchRequest"))
        stop = await alexa.ok(alexa_request(intent_name="AMAZON.StopIntent", text=None))
    assert ssml(launch) == "<speak>Welcome &amp; hello.</speak>"
    assert "reprompt" not in launch["response"]
    assert spoken(stop) == "Ciao."


# --------------------------------------------------------------------------- rejected requests


async def _rejected(alexa: AlexaClient, bot: CountingAgent, *args: Any, **kwargs: Any) -> str:
    status, reply = await alexa.post_raw(*args, **kwargs)
    assert status == 400, reply
    assert isinstance(reply, dict) and isinstance(reply.get("error"), str), reply
    assert bot.messages == []
    return reply["error"]


@pytest.mark.slow
async def test_tampered_body_is_rejected(alexa, bot, caplog):
    body = json.dumps(alexa_request(text="hello")).encode()
    headers = alexa.signed_headers(body)
    tampered = body.replace(b"hello", b"HELLO")
    with caplog.at_level(logging.WARNING, logger="alexa_connector.channel"):
        reason = await _rejected(alexa, bot, tampered, headers)
    assert "signature" in reason
    assert "Rejected an Alexa request" in caplog.text


@pytest.mark.slow
async def test_wrong_skill_id_is_rejected(alexa, bot):
    body = json.dumps(alexa_request(text="hello", skill_id="amzn1.ask.skill.other")).encode()
    assert "application id" in await _rejected(alexa, bot, body, alexa.signed_headers(body))


@pytest.mark.slow
@pytest.mark.parametrize(
    "url",
    [
        "http://s3.amazonaws.com/echo.api/echo-api-cert-12.pem",
        "https://notamazon.com/echo.api/echo-api-cert-12.pem",
        "https://s3.amazonaws.com/EcHo.aPi/echo-api-cert-12.pem",
        "https://s3.amazonaws.com/echo.api/../invalid.pem",
        "https://s3.amazonaws.com:563/echo.api/echo-api-cert-12.pem",
    ],
)
async def test_bad_certificate_url_is_rejected(alexa, bot, url):
    body = json.dumps(alexa_request(text="hello")).encode()
    headers = {**alexa.signed_headers(body), "SignatureCertChainUrl": url}
    assert "certificate chain URL" in await _rejected(alexa, bot, body, headers)


@pytest.mark.slow
async def test_signature_by_an_untrusted_key_is_rejected(alexa, bot):
    body = json.dumps(alexa_request(text="hello")).encode()
    other = make_pki(keys="untrusted")
    headers = alexa.signed_headers(body, key=other.leaf_key)
    assert "signature" in await _rejected(alexa, bot, body, headers)


@pytest.mark.slow
async def test_stale_request_is_rejected(alexa, bot):
    from datetime import datetime, timedelta, timezone

    stale = datetime.now(timezone.utc) - timedelta(seconds=151)
    body = json.dumps(alexa_request(text="hello", timestamp=stale)).encode()
    assert "stale" in await _rejected(alexa, bot, body, alexa.signed_headers(body))


@pytest.mark.slow
async def test_unsigned_and_malformed_requests_are_rejected(alexa, bot):
    body = json.dumps(alexa_request(text="hello")).encode()
    assert "SignatureCertChainUrl" in await _rejected(alexa, bot, body, {})
    headers = alexa.signed_headers(body)
    del headers["Signature-256"]
    assert "Signature" in await _rejected(alexa, bot, body, headers)
    garbage = b"not json at all"
    assert "JSON" in await _rejected(alexa, bot, garbage, alexa.signed_headers(garbage))
    no_request = json.dumps({"version": "1.0", "session": {}}).encode()
    assert "request" in await _rejected(alexa, bot, no_request, alexa.signed_headers(no_request))


@pytest.mark.slow
async def test_signed_request_without_a_user_is_rejected(alexa, bot):
    request = alexa_request(text="hello")
    del request["session"]["user"]
    del request["context"]["System"]["user"]
    body = json.dumps(request).encode()
    assert "user id" in await _rejected(alexa, bot, body, alexa.signed_headers(body))


@pytest.mark.slow
async def test_signed_intent_request_without_an_intent_is_rejected(alexa, bot):
    request = alexa_request(text="hello")
    del request["request"]["intent"]
    body = json.dumps(request).encode()
    assert "intent" in await _rejected(alexa, bot, body, alexa.signed_headers(body))


# --------------------------------------------------------------------------- verification off


@pytest.mark.slow
async def test_verification_disabled_accepts_unsigned_requests_and_warns(bot, pki, caplog):
    with caplog.at_level(logging.WARNING, logger="alexa_connector.channel"):
        connector = AlexaConnector.from_credentials({"verify_signature": False})
    assert "verification is DISABLED" in caplog.text
    assert connector.verifier is None
    async with serve(connector, bot, pki) as alexa:
        body = json.dumps(alexa_request(text="channel", skill_id="anything")).encode()
        status, reply = await alexa.post_raw(body, {"Content-Type": "application/json"})
        assert status == 200
        assert spoken(reply) == "alexa reply"
        bot.messages.clear()
        # The request shape is still checked.
        for bad in (b"{not json", b"[1, 2]", b'{"version": "1.0"}', b'{"request": {}}'):
            status, reply = await alexa.post_raw(bad)
            assert status == 400, (bad, reply)
        assert bot.messages == []


@pytest.mark.slow
async def test_verification_disabled_still_checks_a_configured_skill_id(bot, pki):
    connector = AlexaConnector.from_credentials({"verify_signature": False, "skill_id": SKILL_ID})
    async with serve(connector, bot, pki) as alexa:
        body = json.dumps(alexa_request(text="hello", skill_id="amzn1.ask.skill.other")).encode()
        assert "application id" in await _rejected(alexa, bot, body)


# --------------------------------------------------------------------------- hostile input


@pytest.fixture
def idle_bot() -> CountingAgent:
    """A bot that nothing here may reach (it has no agent behind it)."""
    return CountingAgent(None)


@pytest.fixture
async def guarded(credentials, idle_bot, pki):
    """A server whose Alexa sessions end without the bot (``session_end_intent: null``), so
    a genuine ``SessionEndedRequest`` is answered 200 with no trained bot."""
    connector = AlexaConnector.from_credentials({**credentials, "session_end_intent": None})
    async with serve(connector, idle_bot, pki) as client:
        client.connector = connector
        yield client


def ended(**kwargs: Any) -> bytes:
    return json.dumps(alexa_request("SessionEndedRequest", **kwargs)).encode()


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes the client managed to send


def raw_post(
    base_url: str,
    head: list[bytes],
    body: Iterable[bytes] = (),
    timeout: float = 30.0,
    path: bytes = b"/webhooks/alexa/webhook",
) -> RawReply:
    """POST to the webhook over a plain socket: the ``head`` lines, then ``body`` from a second
    thread, so that an early answer is read while the body is still going out (as curl does).
    Blocking: run it with ``asyncio.to_thread`` when the server is in this event loop."""
    address = urlsplit(base_url)
    sock = socket.create_connection((address.hostname, address.port), timeout=timeout)
    sent = 0

    def send_body() -> None:
        nonlocal sent
        with contextlib.suppress(OSError):
            for chunk in body:
                sock.sendall(chunk)
                sent += len(chunk)

    request = [b"POST " + path + b" HTTP/1.1", b"Host: 127.0.0.1", *head]
    sock.sendall(b"\r\n".join(request) + b"\r\n\r\n")
    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    data = bytearray()
    try:
        while True:
            head_bytes, separator, rest = bytes(data).partition(b"\r\n\r\n")
            if separator:
                status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
                headers = {
                    key.strip().lower(): value.strip()
                    for key, value in (line.split(":", 1) for line in lines)
                }
                if len(rest) >= int(headers.get("content-length", 0)):
                    return RawReply(int(status_line.split()[1]), headers, rest, sent)
            received = sock.recv(65536)
            if not received:
                raise AssertionError(f"connection closed before a full answer: {bytes(data)!r}")
            data += received
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        sender.join(timeout)


async def test_genuine_requests_stream_through_the_route(guarded, idle_bot):
    body = ended()
    status, reply = await guarded.post_raw(body, guarded.signed_headers(body))
    assert (status, reply) == (200, {"version": "1.0", "response": {}})

    async def pieces():  # chunked transfer encoding, no Content-Length
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    status, reply = await guarded.post_raw(pieces(), guarded.signed_headers(body))
    assert (status, reply) == (200, {"version": "1.0", "response": {}})

    # The signature covers every byte: the streamed body arrived whole, up to the limit.
    full = body + b" " * (MAX_BODY_BYTES - len(body))
    status, reply = await guarded.post_raw(full, guarded.signed_headers(full))
    assert status == 200, reply
    over = full + b" "
    status, reply = await guarded.post_raw(over, guarded.signed_headers(over))
    assert status == 413 and "too large" in reply["error"]
    assert idle_bot.messages == []


async def test_a_declared_oversized_body_is_refused_before_it_is_read(guarded):
    for extra in ([], [b"Expect: 100-continue"]):
        head = [b"Content-Type: application/json", b"Content-Length: 94371840", *extra]
        reply = await asyncio.to_thread(raw_post, guarded.base_url, head)  # no body sent
        assert reply.status == 413  # not "100 Continue": nothing of the body is wanted
        assert "too large" in json.loads(reply.body)["error"]
        assert reply.headers["connection"] == "close"
    body = ended()
    status, _ = await guarded.post_raw(body, guarded.signed_headers(body))
    assert status == 200  # the server carries on


MALFORMED_LENGTHS = [[b"-5"], [b"+5"], [b"1_0"], [b"0x10"], [b"\xd9\xa1"], [b"5", b"7"]]


@pytest.mark.timeout(60)  # a frozen event loop cannot run asyncio's own timeouts
@pytest.mark.parametrize("lengths", MALFORMED_LENGTHS)
@pytest.mark.parametrize("path", [b"/webhooks/alexa/webhook", b"/webhooks/rest/webhook"])
async def test_a_malformed_content_length_is_refused_on_every_route(
    credentials, idle_bot, pki, lengths, path
):
    """Sanic 21.12 reads ``Content-Length`` with ``int()`` before routing: ``0x10`` was a 500,
    and ``-5`` made its body reader spin on the event loop forever, freezing every route.
    The channel's guard covers the whole app, here Rasa's REST channel beside it."""
    from rasa.core.channels.channel import register
    from rasa.core.channels.rest import RestInput
    from sanic import Sanic

    app = Sanic(f"alexa_test_{uuid.uuid4().hex[:12]}", configure_logging=False)
    app.ctx.agent = idle_bot
    register([AlexaConnector.from_credentials(credentials), RestInput()], app, "/webhooks/")
    async with running(app) as base:
        head = [b"Content-Type: application/json"]
        head += [b"Content-Length: " + length for length in lengths]
        reply = await asyncio.wait_for(
            asyncio.to_thread(raw_post, base, head, [b"0123456789"], 10, path), 20
        )
        assert reply.status == 400
        assert b"Content-Length" in reply.body
        assert reply.headers["connection"] == "close"
        async with (  # the event loop is free
            aiohttp.ClientSession() as session,
            session.get(f"{base}/webhooks/alexa/") as health,
        ):
            assert health.status == 200
    assert idle_bot.messages == []


async def test_a_90_mb_chunked_body_is_refused_while_it_streams(guarded, idle_bot):
    """Before: Sanic buffered up to 100 MB before the channel looked (90 MB raised memory by
    170 MB). The body is one 64 KiB chunk sent again and again, so the test allocates none of
    it; the server's Python allocations are traced (same process) while it arrives."""
    chunk = b"x" * 65536
    framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    total = 90 * 2**20
    head = [b"Content-Type: application/json", b"Transfer-Encoding: chunked"]
    tracemalloc.start()
    try:
        reply = await asyncio.to_thread(
            raw_post, guarded.base_url, head, itertools.repeat(framed, total // len(chunk))
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.status == 413
    assert "too large" in json.loads(reply.body)["error"]
    assert reply.headers["connection"] == "close"
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB traced while refusing the body"
    assert reply.sent < total // 2  # the server stopped reading; the rest never went out
    assert idle_bot.messages == []


async def test_an_oversized_body_from_an_http_client_gets_413(guarded, idle_bot):
    huge = b" " * (300 * 1024)
    status, reply = await guarded.post_raw(huge, guarded.signed_headers(huge))
    assert status == 413 and "too large" in reply["error"]
    assert idle_bot.messages == []


async def test_undecodable_headers_are_refused_with_400(guarded):
    body = ended()
    for name in (b"SignatureCertChainUrl", b"Signature-256"):
        headers = {**guarded.signed_headers(body)}
        head = [
            f"{key}: {value}".encode()
            for key, value in headers.items()
            if key.lower() != name.decode().lower()
        ]
        head += [name + b": \xff\xfe\x80", b"Content-Length: %d" % len(body)]
        reply = await asyncio.to_thread(raw_post, guarded.base_url, head, [body])
        assert reply.status == 400, reply
        assert json.loads(reply.body)["error"]


async def test_a_flood_of_forged_requests_is_bounded_at_the_webhook(guarded, pki, roots_file):
    """The issue's floods at the route: 500 forged requests at once, each naming another
    chain URL of Amazon's form (served, slowly, by the stand-in), then 500 with query
    strings. Before: one download each (100 at once) and one file each."""
    cache_dir = Path(guarded.connector.settings.certificate_cache_dir)
    files_before = sorted(cache_dir.iterdir())
    forged = base64.b64encode(b"\x00" * 256).decode()
    async with chain_server({}, default=pki.chain_pem, delay=0.2) as server:
        guarded.connector.verifier = LoopbackVerifier(
            SKILL_ID,
            trusted_roots=roots_file,
            certificate_cache_dir=cache_dir,
            base_url=server.base_url,
        )
        body = ended()

        async def post(url: str) -> int:
            headers = {"SignatureCertChainUrl": url, "Signature-256": forged}
            status, reply = await guarded.post_raw(body, headers)
            assert isinstance(reply, dict) and reply["error"], reply
            return status

        urls = [f"https://s3.amazonaws.com/echo.api/echo-api-cert-flood{n}.pem" for n in range(500)]
        statuses = await asyncio.gather(*(post(url) for url in urls))
        assert set(statuses) <= {400, 503} and 503 in statuses
        assert server.paths and server.max_in_flight <= MAX_CONCURRENT_DOWNLOADS

        downloads = len(server.paths)
        statuses = await asyncio.gather(*(post(f"{CERT_URL}?v={n}") for n in range(500)))
        assert set(statuses) == {400}
        assert len(server.paths) == downloads

        # The genuine chain is still served from the cache: no download for it.
        status, _ = await guarded.post_raw(body, guarded.signed_headers(body))
        assert status == 200
        assert len(server.paths) == downloads
    assert sorted(cache_dir.iterdir()) == files_before


# --------------------------------------------------------------------------- configuration


def test_channel_name_and_rasa_can_load_it_from_credentials(credentials):
    from rasa.core.run import _create_single_channel

    channel = _create_single_channel("alexa_connector.AlexaConnector", credentials)
    assert isinstance(channel, AlexaConnector)
    assert channel.name() == "alexa"
    assert channel.url_prefix() == "alexa"
    assert AlexaOutputChannel.name() == "alexa"
    assert channel.settings.skill_id == SKILL_ID
    assert channel.settings.reply_timeout == 6.0
    assert channel.settings.slot_name == "text"


def test_keyword_construction(credentials):
    connector = AlexaConnector(
        SKILL_ID, **{k: v for k, v in credentials.items() if k != "skill_id"}
    )
    assert connector.verifier is not None
    assert connector.verifier.skill_id == SKILL_ID
    assert connector.verifier.timestamp_tolerance == 150


def test_timestamp_tolerance_above_150_s_is_refused(credentials):
    with pytest.raises(AlexaConfigurationError, match="timestamp_tolerance"):
        AlexaConnector.from_credentials({**credentials, "timestamp_tolerance": 300})
    connector = AlexaConnector.from_credentials({**credentials, "timestamp_tolerance": 30})
    assert connector.verifier.timestamp_tolerance == 30


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"skill_id": None}, "skill_id"),
        ({"skill_id": "  "}, "skill_id"),
        ({"timestamp_tolerance": 0}, "timestamp_tolerance"),
        ({"timestamp_tolerance": "soon"}, "timestamp_tolerance"),
        ({"reply_timeout": 8}, "reply_timeout"),
        ({"reply_timeout": -1}, "reply_timeout"),
        ({"reply_timeout": float("nan")}, "reply_timeout"),
        ({"reply_timeout": True}, "reply_timeout"),
        ({"verify_signature": "maybe"}, "verify_signature"),
        ({"launch_message": ""}, "launch_message"),
        ({"stop_message": 3}, "stop_message"),
        ({"slot_name": None}, "slot_name"),
        ({"skil_id": "typo"}, "skil_id"),
        ({"trusted_roots": "/nonexistent/roots.pem"}, "trusted roots"),
    ],
)
def test_bad_credentials_are_refused_at_start_up(credentials, changes, key):
    with pytest.raises(AlexaConfigurationError, match=key):
        AlexaConnector.from_credentials({**credentials, **changes})


def test_missing_credentials_are_refused():
    from rasa.shared.exceptions import RasaException

    with pytest.raises(RasaException, match="skill_id"):
        AlexaConnector.from_credentials(None)
    with pytest.raises(AlexaConfigurationError, match="mapping"):
        AlexaConnector.from_credentials(["skill_id"])


def test_string_values_from_environment_substitution_are_accepted(credentials):
    connector = AlexaConnector.from_credentials(
        {**credentials, "verify_signature": "true", "reply_timeout": "4.5"}
    )
    assert connector.settings.verify_signature is True
    assert connector.settings.reply_timeout == 4.5


def test_package_import_is_light():
    import subprocess
    import sys

    code = (
        "import sys, alexa_connector, alexa_connector.envelope, alexa_connector.speech,"
        " alexa_connector.turns, alexa_connector.verification;"
        "print('rasa' in sys.modules, 'sanic' in sys.modules);"
        "print(alexa_connector.AlexaConnector.name())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "RASA_TELEMETRY_ENABLED": "false"},
        check=True,
    )
    assert result.stdout.split() == ["False", "False", "alexa"]


# --------------------------------------------------------------------------- skill package


def test_interaction_model_matches_the_connector():
    model = json.loads(INTERACTION_MODEL.read_text())["interactionModel"]["languageModel"]
    assert model["invocationName"] == model["invocationName"].lower()
    assert len(model["invocationName"].split()) >= 2
    intents = {intent["name"]: intent for intent in model["intents"]}
    for builtin in (
        "AMAZON.HelpIntent",
        "AMAZON.StopIntent",
        "AMAZON.CancelIntent",
        "AMAZON.FallbackIntent",
        "AMAZON.NavigateHomeIntent",
    ):
        assert builtin in intents
    catch_all = intents["CatchAllIntent"]
    (slot,) = catch_all["slots"]
    assert slot["name"] == defaults.slot_name
    assert slot["type"] == "CATCH_ALL"
    samples = catch_all["samples"]
    assert "{text}" in samples
    assert all("{text}" in sample for sample in samples)
    assert len(samples) == len(set(samples)) >= 5
    (slot_type,) = [t for t in model["types"] if t["name"] == "CATCH_ALL"]
    values = [value["name"]["value"] for value in slot_type["values"]]
    assert len(values) == len(set(values)) >= 50
    assert any(len(value.split()) >= 6 for value in values)


def test_skill_manifest():
    manifest = json.loads(SKILL_MANIFEST.read_text())["manifest"]
    endpoint = manifest["apis"]["custom"]["endpoint"]
    assert endpoint["uri"].startswith("https://")
    assert endpoint["uri"].endswith("/webhooks/alexa/webhook")
    assert endpoint["sslCertificateType"] in ("Wildcard", "SelfSigned", "Trusted")
    assert "en-US" in manifest["publishingInformation"]["locales"]
