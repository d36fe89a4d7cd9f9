"""The pure Alexa <-> Rasa conversions: request and response envelopes
(alexa_connector/envelope.py) and speech (alexa_connector/speech.py)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from support.alexa_pki import USER_ID, alexa_request

from alexa_connector.envelope import (
    AlexaRequestError,
    alexa_user_id,
    build_response,
    intent_name,
    request_type,
    user_text,
)
from alexa_connector.speech import (
    ELLIPSIS,
    MAX_BUTTON_CHOICES,
    MAX_SSML_CHARS,
    button_choices,
    button_hint,
    escape_ssml,
    match_button,
    normalise_text,
    speech_parts,
    text_to_ssml,
    to_ssml,
)

BREAK = '<break strength="strong"/>'


def spoken(ssml: str) -> str:
    """The text a listener hears: parse the SSML as XML (it must be well-formed)."""
    root = ET.fromstring(ssml)
    assert root.tag == "speak"
    return "".join(root.itertext())


# --------------------------------------------------------------------------- user ids


def test_user_id_comes_from_the_session():
    assert alexa_user_id(alexa_request()) == USER_ID


def test_person_id_takes_precedence_over_the_account():
    request = alexa_request()
    request["context"]["System"]["person"] = {"personId": "amzn1.ask.person.ALICE"}
    assert alexa_user_id(request) == "amzn1.ask.person.ALICE"


def test_user_id_falls_back_to_the_context():
    request = alexa_request()
    del request["session"]
    assert alexa_user_id(request) == USER_ID


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: (r.pop("session"), r["context"]["System"].pop("user")),
        lambda r: (r["session"]["user"].update(userId=""), r["context"]["System"].pop("user")),
        lambda r: r.clear(),
    ],
)
def test_missing_user_id_is_an_error(mutate):
    request = alexa_request()
    mutate(request)
    with pytest.raises(AlexaRequestError, match="user id"):
        alexa_user_id(request)


def test_blank_person_id_is_ignored():
    request = alexa_request()
    request["context"]["System"]["person"] = {"personId": "  "}
    assert alexa_user_id(request) == USER_ID


# --------------------------------------------------------------------------- user text


def test_user_text_from_the_catch_all_slot():
    assert user_text(alexa_request(text="  what's on tonight "), "text") == "what's on tonight"


def test_user_text_from_another_slot_when_the_named_one_is_missing():
    request = alexa_request(text="recommend a comedy", slot_name="query")
    assert user_text(request, "text") == "recommend a comedy"


def test_user_text_from_the_new_slot_value_format():
    request = alexa_request(text=None)
    request["request"]["intent"]["slots"]["text"]["slotValue"] = {
        "type": "Simple",
        "value": "hello",
    }
    assert user_text(request, "text") == "hello"


@pytest.mark.parametrize("text", [None, "", "   "])
def test_user_text_none_for_an_empty_slot(text):
    assert user_text(alexa_request(text=text), "text") is None


def test_user_text_none_without_slots():
    assert user_text(alexa_request(intent_name="AMAZON.HelpIntent", slot_name=""), "text") is None
    assert user_text(alexa_request("LaunchRequest"), "text") is None
    assert user_text({"request": {"intent": {"slots": "junk"}}}, "text") is None


def test_request_type_and_intent_name():
    request = alexa_request(intent_name="AMAZON.StopIntent", text=None)
    assert request_type(request) == "IntentRequest"
    assert intent_name(request) == "AMAZON.StopIntent"
    assert request_type({"request": {"type": 3}}) is None
    assert intent_name(alexa_request("LaunchRequest")) is None


# --------------------------------------------------------------------------- SSML


def test_all_five_xml_characters_are_escaped():
    assert escape_ssml("""a & b < c > d " e ' f""") == ("a &amp; b &lt; c &gt; d &quot; e &apos; f")
    ssml = to_ssml([{"text": """Tom & Jerry <3 "quotes" 'single' > x"""}])
    assert ssml == (
        "<speak>Tom &amp; Jerry &lt;3 &quot;quotes&quot; &apos;single&apos; &gt; x</speak>"
    )
    assert spoken(ssml) == """Tom & Jerry <3 "quotes" 'single' > x"""


def test_ssml_markup_in_a_bot_text_is_spoken_literally():
    ssml = to_ssml([{"text": '<audio src="https://evil.example/x.mp3"/> hi'}])
    assert "<audio" not in ssml
    assert spoken(ssml) == '<audio src="https://evil.example/x.mp3"/> hi'


def test_all_messages_are_spoken_in_order():
    messages = [
        {"recipient_id": "u", "text": "Hello!"},
        {"recipient_id": "u", "text": "How are you"},
        {"recipient_id": "u", "text": "Tell me."},
    ]
    ssml = to_ssml(messages)
    assert ssml == f"<speak>Hello!{BREAK}How are you{BREAK}Tell me.</speak>"
    assert spoken(ssml) == "Hello!How are youTell me."


def test_whitespace_is_normalised_and_invalid_xml_characters_removed():
    ssml = to_ssml([{"text": "  one\n\ntwo\t three \x00\x07four\ud800 "}])
    assert ssml == "<speak>one two three four</speak>"
    assert normalise_text(None) == ""
    assert normalise_text(42) == ""


def test_images_attachments_custom_and_elements_are_dropped():
    messages = [
        {"image": "https://example.com/poster.png"},
        {"text": "Here it is."},
        {"attachment": "https://example.com/file.pdf"},
        {"custom": {"payload": "x"}},
        {"elements": [{"title": "card"}]},
        {"text": "   "},
        "not a message",
    ]
    assert to_ssml(messages) == "<speak>Here it is.</speak>"
    assert speech_parts(messages) == ["Here it is."]


def test_nothing_speakable():
    assert speech_parts([{"image": "x"}]) == []
    assert speech_parts(None) == []
    assert to_ssml([]) == "<speak></speak>"
    assert text_to_ssml("   ") is None
    assert text_to_ssml(None) is None
    assert text_to_ssml("Hi & bye") == "<speak>Hi &amp; bye</speak>"


def test_buttons_are_read_as_a_hint():
    buttons = [
        {"title": "Comedy", "payload": "/inform"},
        {"title": "Drama.", "payload": "/inform"},
        {"title": "Horror & gore", "payload": "/inform"},
    ]
    ssml = to_ssml([{"text": "What kind of movie", "buttons": buttons}])
    assert spoken(ssml) == "What kind of movie. You can say: Comedy, Drama or Horror & gore."
    assert button_hint(buttons[:1]) == "You can say: Comedy."
    assert button_hint(buttons[:2]) == "You can say: Comedy or Drama."
    assert button_hint([{"payload": "/x"}, "junk"]) == ""
    assert button_hint("junk") == ""
    # Buttons without text still give something to say.
    assert to_ssml([{"buttons": buttons[:1]}]) == "<speak>You can say: Comedy.</speak>"


def test_speech_is_capped_at_8000_characters_at_a_sentence_end():
    sentence = "This is sentence number {:04d} & it is fine. "
    text = "".join(sentence.format(i) for i in range(400))
    ssml = to_ssml([{"text": text}])
    assert len(ssml) <= MAX_SSML_CHARS
    assert len(ssml) > MAX_SSML_CHARS // 2
    body = spoken(ssml)
    assert body.endswith("it is fine" + ELLIPSIS)
    assert text.startswith(body[: -len(ELLIPSIS)])


def test_speech_is_capped_at_a_word_boundary_without_sentences():
    text = " ".join(["word&"] * 3000)
    ssml = to_ssml([{"text": text}])
    assert len(ssml) <= MAX_SSML_CHARS
    assert ssml.endswith(f"word&amp;{ELLIPSIS}</speak>")
    # a single endless word is cut hard
    ssml = to_ssml([{"text": "x" * 20_000}])
    assert len(ssml) == MAX_SSML_CHARS
    assert ssml.endswith(f"x{ELLIPSIS}</speak>")


def test_cap_applies_across_messages():
    messages = [{"text": "First message here."}] + [{"text": "a " * 1000}] * 10
    ssml = to_ssml(messages)
    assert len(ssml) <= MAX_SSML_CHARS
    assert ssml.startswith("<speak>First message here.")
    assert ssml.endswith(f"a{ELLIPSIS}</speak>")
    ET.fromstring(ssml)
    small = to_ssml(messages, max_chars=100)
    assert len(small) <= 100
    ET.fromstring(small)
    with pytest.raises(ValueError):
        to_ssml(messages, max_chars=10)


def test_short_speech_is_not_changed():
    text = "word " * 100
    assert to_ssml([{"text": text}]) == f"<speak>{text.strip()}</speak>"


# --------------------------------------------------------------------------- buttons


def test_button_choices_and_matching():
    messages = [
        {"text": "Pick one", "buttons": [{"title": "Sci-fi!", "payload": "/pick_scifi"}]},
        {"text": "or", "buttons": [{"title": "Drama", "payload": " /pick_drama "}]},
        {"buttons": [{"title": "No payload"}, {"payload": "/no_title"}, "junk"]},
    ]
    choices = button_choices(messages)
    assert choices == [
        {"title": "Sci-fi!", "payload": "/pick_scifi"},
        {"title": "Drama", "payload": "/pick_drama"},
    ]
    assert json.loads(json.dumps(choices)) == choices
    assert match_button("sci fi", choices) == "/pick_scifi"
    assert match_button("  DRAMA. ", choices) == "/pick_drama"
    assert match_button("a drama please", choices) is None
    assert match_button("", choices) is None
    assert match_button("drama", "junk") is None
    assert match_button("drama", [None, {"title": 3}, {"title": "Drama", "payload": 5}]) is None


def test_button_choices_are_bounded():
    buttons = [{"title": f"t{i}", "payload": f"/p{i}"} for i in range(100)]
    assert len(button_choices([{"buttons": buttons}])) == MAX_BUTTON_CHOICES


# --------------------------------------------------------------------------- responses


def test_response_envelope_with_real_booleans():
    reply = build_response(
        "<speak>Hi</speak>",
        end_session=False,
        reprompt="<speak>Anything else?</speak>",
        session_attributes={"a": 1},
    )
    assert reply == {
        "version": "1.0",
        "sessionAttributes": {"a": 1},
        "response": {
            "outputSpeech": {"type": "SSML", "ssml": "<speak>Hi</speak>"},
            "reprompt": {"outputSpeech": {"type": "SSML", "ssml": "<speak>Anything else?</speak>"}},
            "shouldEndSession": False,
        },
    }
    assert '"shouldEndSession": false' in json.dumps(reply)


def test_ending_response_has_no_reprompt():
    reply = build_response("<speak>Bye</speak>", end_session=True, reprompt="<speak>x</speak>")
    assert reply["response"] == {
        "outputSpeech": {"type": "SSML", "ssml": "<speak>Bye</speak>"},
        "shouldEndSession": True,
    }
    assert reply["sessionAttributes"] == {}
    assert build_response("<speak>Hi</speak>", end_session=False)["response"].keys() == {
        "outputSpeech",
        "shouldEndSession",
    }


def test_no_speech_response():
    assert build_response(None, end_session=True, reprompt="<speak>x</speak>") == {
        "version": "1.0",
        "response": {},
    }


def test_response_is_a_valid_ask_sdk_model():
    from ask_sdk_core.serialize import DefaultSerializer
    from ask_sdk_model import ResponseEnvelope

    reply = build_response(
        to_ssml([{"text": "a & b"}]),
        end_session=False,
        reprompt=text_to_ssml("Anything else?"),
        session_attributes={"rasa_buttons": [{"title": "A", "payload": "/a"}]},
    )
    envelope = DefaultSerializer().deserialize(json.dumps(reply), ResponseEnvelope)
    assert envelope.response.output_speech.ssml == "<speak>a &amp; b</speak>"
    assert envelope.response.should_end_session is False
    assert envelope.response.reprompt.output_speech.ssml == "<speak>Anything else?</speak>"
