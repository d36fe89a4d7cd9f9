"""Long conversations as Rasa 3.6 records them, for the tests of trackers of any length.

Every turn is what a DIET pipeline and the demo's policies leave in a tracker: an
``action_listen``, the user's message with its full ``parse_data`` (intent, an
``intent_ranking`` of 10, an entity, ``message_id``, metadata), the policy's featurization
event and ``SlotSet``, the HRED's ``utter_hred`` with policy and confidence, and the bot's
message with ``data``. Serialized
with Rasa's own ``as_dict``, a turn is about 2 KB of JSON: 20,000 turns are tens of MB, what
Rasa's ``CallbackNaturalLanguageGenerator`` posts on every NLG call of such a conversation.
"""

from __future__ import annotations

import json
import random
from typing import Any

from rasa.shared.core.events import (
    ActionExecuted,
    BotUttered,
    DefinePrevUserUtteredFeaturization,
    Event,
    SessionStarted,
    SlotSet,
    UserUttered,
)

INTENTS = (
    "chitchat",
    "greet",
    "goodbye",
    "affirm",
    "deny",
    "ask_recommendation",
    "inform_genre",
    "bot_challenge",
    "help",
    "thank",
)
WORDS = ("movie", "film", "actor", "comedy", "drama", "plot", "scene", "great", "really", "think")
MODEL_METADATA = {"model_id": "4f3c2a1b0e9d8c7b", "assistant_id": "placeholder_default"}
BOT_DATA = {
    "elements": None,
    "quick_replies": None,
    "buttons": None,
    "attachment": None,
    "image": None,
    "custom": None,
}


def user_text(turn: int) -> str:
    """The user's text of ``turn``: unique, so a context taken from the wrong turn shows."""
    return f"user turn {turn} about {WORDS[turn % len(WORDS)]}"


def bot_text(turn: int) -> str:
    return f"bot reply {turn} on {WORDS[(turn * 7) % len(WORDS)]}"


def rankings(count: int, seed: int) -> list[list[dict[str, Any]]]:
    """``count`` intent rankings of all 10 intents, as DIET gives them (best first)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        confidences = sorted((round(rng.random(), 8) for _ in INTENTS), reverse=True)
        names = rng.sample(INTENTS, len(INTENTS))
        out.append([{"name": n, "confidence": c} for n, c in zip(names, confidences)])
    return out


def parse_data(text: str, turn: int, ranking: list[dict[str, Any]]) -> dict[str, Any]:
    """What Rasa's NLU gives for ``text`` with DIET: intent, ranking, an entity."""
    entity = {
        "entity": "genre",
        "start": 0,
        "end": 4,
        "confidence_entity": 0.9876543,
        "value": "user",
        "extractor": "DIETClassifier",
    }
    return {
        "intent": dict(ranking[0]),
        "entities": [entity],
        "text": text,
        "message_id": f"{turn:032x}",
        "metadata": {},
        "intent_ranking": [dict(r) for r in ranking],
        "response_selector": {
            "all_retrieval_intents": [],
            "default": {
                "response": {
                    "responses": None,
                    "confidence": 0.0,
                    "intent_response_key": None,
                    "utter_action": "utter_None",
                },
                "ranking": [],
            },
        },
    }


def turn_events(turn: int, ranking: list[dict[str, Any]], timestamp: float) -> list[Event]:
    """One turn: the user speaks, the HREDPolicy predicts ``utter_hred``, the bot speaks."""
    text = user_text(turn)
    return [
        UserUttered(
            text,
            intent=None,
            parse_data=parse_data(text, turn, ranking),
            timestamp=timestamp,
            input_channel="rest",
            message_id=f"{turn:032x}",
            metadata=dict(MODEL_METADATA),
        ),
        DefinePrevUserUtteredFeaturization(False, timestamp=timestamp + 0.1),
        SlotSet("hred_response", bot_text(turn), timestamp=timestamp + 0.1),
        ActionExecuted(
            "utter_hred",
            policy="policy_2_HREDPolicy",
            confidence=0.97,
            timestamp=timestamp + 0.1,
            metadata=dict(MODEL_METADATA),
        ),
        BotUttered(
            bot_text(turn),
            dict(BOT_DATA),
            {"utter_action": "utter_hred", **MODEL_METADATA},
            timestamp=timestamp + 0.2,
        ),
        ActionExecuted(
            "action_listen",
            policy="policy_2_HREDPolicy",
            confidence=1.0,
            timestamp=timestamp + 0.3,
            metadata=dict(MODEL_METADATA),
        ),
    ]


def long_conversation(turns: int, *, seed: int = 0, sessions: int = 1) -> list[Event]:
    """``turns`` turns in ``sessions`` sessions (the turns split evenly between them), each
    session opened as Rasa opens one (``action_session_start``, ``session_started``,
    ``action_listen``). Turn ``i`` says ``user_text(i)`` and ``bot_text(i)``."""
    variants = rankings(16, seed)
    per_session = max(1, -(-turns // sessions))
    events: list[Event] = []
    timestamp = 1_700_000_000.0
    for turn in range(turns):
        if turn % per_session == 0:
            events += [
                ActionExecuted("action_session_start", timestamp=timestamp),
                SessionStarted(timestamp=timestamp),
                ActionExecuted("action_listen", timestamp=timestamp),
            ]
        events += turn_events(turn, variants[turn % len(variants)], timestamp)
        timestamp += 1.0
    return events


def nlg_body(events: list[Event], response: str = "utter_hred") -> bytes:
    """Rasa's NLG request for a tracker holding ``events``, as ``nlg_request_format`` builds it
    (``tracker.current_state(EventVerbosity.ALL)``), without replaying the events into a
    ``DialogueStateTracker`` (which the request does not need)."""
    serialized = [event.as_dict() for event in events]
    latest = next(e for e in reversed(serialized) if e["event"] == "user")
    tracker = {
        "sender_id": "long-talker",
        "slots": {"hred_response": bot_text(0), "genre": None, "session_started_metadata": None},
        "latest_message": latest["parse_data"],
        "latest_event_time": serialized[-1]["timestamp"],
        "followup_action": None,
        "paused": False,
        "events": serialized,
        "latest_input_channel": "rest",
        "active_loop": {},
        "latest_action": {"action_name": "utter_hred"},
        "latest_action_name": "utter_hred",
    }
    body = {
        "response": response,
        "id": None,
        "arguments": {},
        "tracker": tracker,
        "channel": {"name": "rest"},
    }
    return json.dumps(body).encode()
