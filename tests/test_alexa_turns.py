"""What the skill does with each kind of request, and what it answers
(alexa_connector/turns.py), and the credentials it is configured with
(alexa_connector/settings.py): pure functions, no server and no bot.

tests/test_alexa_channel.py checks the same behaviour end to end through a real server and
a trained Rasa bot.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import pytest
from support.alexa_pki import SKILL_ID, alexa_request

from alexa_connector.envelope import AlexaRequestError
from alexa_connector.settings import AlexaConfigurationError, AlexaSettings
from alexa_connector.turns import (
    BUTTONS_ATTRIBUTE,
    Converse,
    Ignore,
    Say,
    bot_reply,
    failure_reply,
    plan_turn,
    say_reply,
)

DEFAULTS = AlexaSettings(skill_id=SKILL_ID)
CHOICES = [
    {"title": "Comedy", "payload": "/pick_comedy"},
    {"title": "Drama", "payload": "/pick_drama"},
]


def settings(**changes: object) -> AlexaSettings:
    return dataclasses.replace(DEFAULTS, **changes)


def builtin(intent: str) -> dict:
    return alexa_request(intent_name=intent, text=None, slot_name="")


def ssml(reply: dict) -> str:
    return reply["response"]["outputSpeech"]["ssml"]


def spoken(reply: dict) -> str:
    """What the listener hears (the SSML must be well-formed XML)."""
    return "".join(ET.fromstring(ssml(reply)).itertext())


# --------------------------------------------------------------------------- plans


def test_launch_speaks_the_launch_message_or_runs_the_launch_intent():
    request = alexa_request("LaunchRequest")
    assert plan_turn(request, DEFAULTS) == Say(DEFAULTS.launch_message)
    assert plan_turn(request, settings(launch_intent="/greet")) == Converse(
        "/greet", empty_reply=DEFAULTS.launch_message
    )


def test_the_catch_all_slot_goes_through_the_bot():
    assert plan_turn(alexa_request(text="  hello there "), DEFAULTS) == Converse("hello there")


def test_an_empty_slot_is_answered_without_the_bot():
    assert plan_turn(alexa_request(text=None), DEFAULTS) == Say(DEFAULTS.unclear_message)


def test_a_spoken_button_title_sends_its_payload():
    request = alexa_request(text="drama!", attributes={BUTTONS_ATTRIBUTE: CHOICES})
    assert plan_turn(request, DEFAULTS) == Converse("/pick_drama")
    request = alexa_request(text="horror", attributes={BUTTONS_ATTRIBUTE: CHOICES})
    assert plan_turn(request, DEFAULTS) == Converse("horror")


@pytest.mark.parametrize("intent", ["AMAZON.StopIntent", "AMAZON.CancelIntent"])
def test_stop_and_cancel_end_the_session(intent):
    assert plan_turn(builtin(intent), DEFAULTS) == Say(DEFAULTS.stop_message, end_session=True)


def test_help_speaks_the_help_message_or_runs_the_help_intent():
    request = builtin("AMAZON.HelpIntent")
    assert plan_turn(request, DEFAULTS) == Say(DEFAULTS.help_message)
    assert plan_turn(request, settings(help_intent="/helpme")) == Converse(
        "/helpme", empty_reply=DEFAULTS.help_message
    )


@pytest.mark.parametrize("intent", ["AMAZON.FallbackIntent", "AMAZON.NavigateHomeIntent"])
def test_other_builtins_run_the_bots_fallback(intent):
    assert plan_turn(builtin(intent), DEFAULTS) == Converse("/nlu_fallback")
    assert plan_turn(builtin(intent), settings(fallback_intent=None)) == Say(
        DEFAULTS.fallback_message
    )


def test_session_ended_has_no_speech_and_ends_the_session():
    for reason in ("USER_INITIATED", "ERROR"):
        request = alexa_request("SessionEndedRequest", reason=reason)
        assert plan_turn(request, DEFAULTS) == Say(None, end_session=True)


def test_other_request_types_are_ignored():
    request = alexa_request("LaunchRequest")
    request["request"]["type"] = "Alexa.Presentation.APL.UserEvent"
    assert plan_turn(request, DEFAULTS) == Ignore("Alexa.Presentation.APL.UserEvent")


def test_requests_without_a_type_or_an_intent_name_are_refused():
    request = alexa_request()
    del request["request"]["type"]
    with pytest.raises(AlexaRequestError, match="no type"):
        plan_turn(request, DEFAULTS)
    request = alexa_request()
    del request["request"]["intent"]["name"]
    with pytest.raises(AlexaRequestError, match="no intent name"):
        plan_turn(request, DEFAULTS)


# --------------------------------------------------------------------------- replies


def test_say_keeps_the_session_attributes_while_the_session_stays_open():
    attributes = {BUTTONS_ATTRIBUTE: CHOICES, "other": 1}
    request = alexa_request(text=None, attributes=attributes)
    reply = say_reply(Say("Say it again."), request, DEFAULTS)
    assert reply == {
        "version": "1.0",
        "sessionAttributes": attributes,
        "response": {
            "outputSpeech": {"type": "SSML", "ssml": "<speak>Say it again.</speak>"},
            "reprompt": {
                "outputSpeech": {"type": "SSML", "ssml": f"<speak>{DEFAULTS.reprompt}</speak>"}
            },
            "shouldEndSession": False,
        },
    }


def test_a_session_that_ends_keeps_nothing_and_is_not_reprompted():
    request = builtin("AMAZON.StopIntent")
    request["session"]["attributes"] = {"other": 1}
    reply = say_reply(Say("Ciao.", end_session=True), request, DEFAULTS)
    assert reply["sessionAttributes"] == {}
    assert reply["response"] == {
        "outputSpeech": {"type": "SSML", "ssml": "<speak>Ciao.</speak>"},
        "shouldEndSession": True,
    }
    ended = alexa_request("SessionEndedRequest")
    assert say_reply(Say(None, end_session=True), ended, DEFAULTS) == {
        "version": "1.0",
        "response": {},
    }


def test_bot_reply_speaks_every_message_and_remembers_the_new_buttons():
    request = alexa_request(text="options", attributes={BUTTONS_ATTRIBUTE: ["old"], "other": 1})
    messages = [
        {"recipient_id": "u", "text": "Hello & welcome"},
        {"recipient_id": "u", "text": "Which genre?", "buttons": CHOICES},
    ]
    reply = bot_reply(Converse("options"), messages, request, DEFAULTS)
    assert ssml(reply) == (
        '<speak>Hello &amp; welcome<break strength="strong"/>'
        "Which genre? You can say: Comedy or Drama.</speak>"
    )
    assert reply["sessionAttributes"] == {"other": 1, BUTTONS_ATTRIBUTE: CHOICES}
    assert reply["response"]["shouldEndSession"] is False
    # Buttons are forgotten once answered.
    reply = bot_reply(Converse("/pick_comedy"), [{"text": "Comedy it is."}], request, DEFAULTS)
    assert reply["sessionAttributes"] == {"other": 1}


def test_an_empty_or_late_bot_reply_speaks_a_configured_text_and_forgets_the_buttons():
    request = alexa_request(text="x", attributes={BUTTONS_ATTRIBUTE: CHOICES, "other": 1})
    unspeakable = [{"custom": {"poster": "https://example.com/poster.png"}}]
    for turn, messages, text in (
        (Converse("x"), [], DEFAULTS.fallback_message),
        (Converse("x"), unspeakable, DEFAULTS.fallback_message),
        (Converse("/greet", empty_reply="Hi!"), [], "Hi!"),
        (Converse("x"), None, DEFAULTS.timeout_message),
    ):
        reply = bot_reply(turn, messages, request, DEFAULTS)
        assert spoken(reply) == text
        assert reply["sessionAttributes"] == {"other": 1}


def test_without_a_reprompt_none_is_sent():
    reply = say_reply(Say(DEFAULTS.help_message), alexa_request(), settings(reprompt=None))
    assert "reprompt" not in reply["response"]


def test_a_failure_speaks_the_fallback_message():
    reply = failure_reply(DEFAULTS)
    assert spoken(reply) == DEFAULTS.fallback_message
    assert reply["sessionAttributes"] == {}
    assert reply["response"]["shouldEndSession"] is False


# --------------------------------------------------------------------------- settings


def test_settings_from_credentials_convert_strings_and_strip_texts():
    parsed = AlexaSettings.from_mapping(
        {
            "skill_id": f" {SKILL_ID} ",
            "verify_signature": "yes",
            "reply_timeout": "4.5",
            "timestamp_tolerance": 30,
            "reprompt": "  ",
            "launch_intent": "/greet",
        }
    )
    assert parsed == settings(
        verify_signature=True,
        reply_timeout=4.5,
        timestamp_tolerance=30.0,
        reprompt=None,
        launch_intent="/greet",
    )


def test_unknown_credential_keys_are_named():
    with pytest.raises(AlexaConfigurationError, match="skil_id, tone"):
        AlexaSettings.from_mapping({"skill_id": SKILL_ID, "skil_id": "x", "tone": "x"})


def test_local_development_needs_no_skill_id():
    assert AlexaSettings.from_mapping({"verify_signature": False}).skill_id is None
    with pytest.raises(AlexaConfigurationError, match="skill_id"):
        AlexaSettings.from_mapping({})
