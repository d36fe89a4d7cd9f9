"""Tests for rasa_hred.integration.context: tracker events -> HRED session context."""

from __future__ import annotations

import json
import random
from collections import deque

import pytest
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import (
    ActionExecuted,
    ActionReverted,
    AllSlotsReset,
    BotUttered,
    Event,
    Restarted,
    SessionStarted,
    SlotSet,
    UserUtteranceReverted,
    UserUttered,
)
from rasa.shared.core.trackers import DialogueStateTracker, EventVerbosity

from rasa_hred.integration.context import dialogue_context, tracker_context

DOMAIN = Domain.from_yaml(
    """
version: "3.1"
intents: [greet, chitchat, inform]
entities: [genre]
slots:
  genre:
    type: text
    influence_conversation: false
    mappings: [{type: from_entity, entity: genre}]
  hred_response:
    type: text
    influence_conversation: false
    mappings: [{type: custom}]
responses:
  utter_greet: [{text: "Hello!"}]
  utter_hred: [{text: "{hred_response}"}]
"""
)


def listen() -> ActionExecuted:
    return ActionExecuted("action_listen")


def user(text: str | None, intent: str = "chitchat") -> UserUttered:
    return UserUttered(text, {"name": intent, "confidence": 1.0})


def bot(text: str | None, action: str = "utter_hred") -> list[Event]:
    return [ActionExecuted(action), BotUttered(text, metadata={"utter_action": action})]


def start() -> list[Event]:
    return [ActionExecuted("action_session_start"), SessionStarted(), listen()]


def exchange(user_text: str, bot_text: str) -> list[Event]:
    """One user message and the bot's reply, then listening again (as Rasa logs them)."""
    return [user(user_text), *bot(bot_text), listen()]


def as_json(events: list[Event]) -> list[dict]:
    """The event dicts a tracker store / NLG request holds (through real JSON)."""
    tracker = DialogueStateTracker.from_events("json", events, slots=DOMAIN.slots)
    return json.loads(json.dumps(tracker.current_state(EventVerbosity.ALL)["events"]))


def both_paths(events: list[Event], **kwargs: object) -> list[str]:
    """Context from Event objects, asserting the dict path gives the same."""
    from_objects = dialogue_context(events, **kwargs)
    assert dialogue_context(as_json(events), **kwargs) == from_objects
    return from_objects


def test_user_and_bot_texts_in_order() -> None:
    events = [
        *start(),
        *exchange("hi there", "hello, seen any good films?"),
        *exchange("I saw Alien yesterday", "a classic!"),
    ]
    assert both_paths(events) == [
        "hi there",
        "hello, seen any good films?",
        "I saw Alien yesterday",
        "a classic!",
    ]


def test_latest_user_message_ends_the_context() -> None:
    events = [*start(), *exchange("hi", "hello"), user("what's your favourite film?")]
    assert both_paths(events) == ["hi", "hello", "what's your favourite film?"]


def test_empty_conversation() -> None:
    assert dialogue_context([]) == []
    assert both_paths(start()) == []


def test_only_the_last_session_counts() -> None:
    events = [
        *start(),
        *exchange("old session", "old reply"),
        *start(),
        *exchange("new session", "new reply"),
    ]
    assert both_paths(events) == ["new session", "new reply"]


def test_restart_drops_the_history() -> None:
    events = [
        *start(),
        *exchange("before restart", "reply"),
        user("/restart", intent="restart"),
        ActionExecuted("action_restart"),
        Restarted(),
        *start(),
        user("after restart"),
    ]
    assert both_paths(events) == ["after restart"]


def test_events_before_any_session_start_count() -> None:
    # Trackers without sessions (session_expiration_time: 0 aside) or test fixtures.
    assert both_paths([listen(), *exchange("hi", "hello")]) == ["hi", "hello"]


def test_consecutive_messages_of_one_speaker_are_merged() -> None:
    events = [
        *start(),
        user("hi"),
        *bot("Hello!", action="utter_greet"),
        *bot("Want a movie tip?", action="utter_help"),
        listen(),
        user("yes"),
        listen(),
        user("a comedy please"),
        *bot("How about Groundhog Day?", action="utter_recommend_movie"),
    ]
    assert both_paths(events) == [
        "hi",
        "Hello! Want a movie tip?",
        "yes a comedy please",
        "How about Groundhog Day?",
    ]


def test_button_payloads_and_intent_triggers_contribute_no_text() -> None:
    events = [
        *start(),
        user("/greet", intent="greet"),
        *bot("Hello!", action="utter_greet"),
        listen(),
        user("recommend a film"),
        *bot("Which genre?", action="utter_ask_genre"),
        listen(),
        user('/inform{"genre": "comedy"}', intent="inform"),
        SlotSet("genre", "comedy"),
        *bot("How about a good comedy film?", action="utter_recommend_movie"),
        listen(),
        user("  /greet  ", intent="greet"),
    ]
    # The bot turns around the skipped payload merge, so the speakers still alternate.
    assert both_paths(events) == [
        "Hello!",
        "recommend a film",
        "Which genre? How about a good comedy film?",
    ]


def test_slash_inside_a_message_is_ordinary_text() -> None:
    assert both_paths([*start(), user("is AC/DC in any film?")]) == ["is AC/DC in any film?"]


def test_empty_and_whitespace_texts_are_dropped() -> None:
    events = [
        *start(),
        user(""),
        user("   "),
        user(None),
        user("  hi  "),
        *bot(None, action="utter_image"),
        *bot(" \n "),
        *bot("\thello\n"),
    ]
    assert both_paths(events) == ["hi", "hello"]


def test_non_text_events_are_ignored() -> None:
    events = [
        *start(),
        user("hi"),
        SlotSet("genre", "drama"),
        SlotSet("hred_response", "not said"),
        AllSlotsReset(),
        *bot("hello"),
        listen(),
    ]
    assert both_paths(events) == ["hi", "hello"]


@pytest.mark.parametrize(
    ("max_turns", "expected"),
    [
        (None, ["u1", "b1", "u2", "b2", "u3"]),
        (0, []),
        (1, ["u3"]),
        (2, ["b2", "u3"]),
        (5, ["u1", "b1", "u2", "b2", "u3"]),
        (50, ["u1", "b1", "u2", "b2", "u3"]),
    ],
)
def test_max_turns_keeps_the_last_turns(max_turns: int | None, expected: list[str]) -> None:
    events = [*start(), *exchange("u1", "b1"), *exchange("u2", "b2"), user("u3")]
    assert both_paths(events, max_turns=max_turns) == expected


def test_max_turns_counts_merged_turns() -> None:
    events = [*start(), user("a"), user("b"), *bot("c"), *bot("d"), listen(), user("e")]
    assert both_paths(events, max_turns=2) == ["c d", "e"]


def test_negative_max_turns_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_turns"):
        dialogue_context([], max_turns=-1)


def test_rewind_removes_the_last_user_message_and_what_followed() -> None:
    # action_default_fallback: utter_default, then UserUtteranceReverted.
    events = [
        *start(),
        *exchange("hi", "hello"),
        user("gibberish"),
        ActionExecuted("action_default_fallback"),
        BotUttered("Sorry, I didn't get that."),
        UserUtteranceReverted(),
        listen(),
        user("do you like westerns?"),
    ]
    assert both_paths(events) == ["hi", "hello", "do you like westerns?"]


def test_action_back_reverts_two_user_messages() -> None:
    # action_back returns two UserUtteranceReverted events: the /back message and the one
    # before it go, with the bot's reply to the latter.
    events = [
        *start(),
        *exchange("hi", "hello"),
        *exchange("I hate musicals", "really? why?"),
        user("/back", intent="back"),
        ActionExecuted("action_back"),
        BotUttered("Undoing the last message."),
        UserUtteranceReverted(),
        UserUtteranceReverted(),
        listen(),
        user("I love musicals"),
    ]
    assert both_paths(events) == ["hi", "hello", "I love musicals"]


def test_action_reverted_removes_the_last_bot_utterance() -> None:
    events = [
        *start(),
        user("hi"),
        *bot("first try"),
        ActionReverted(),
        *bot("second try"),
        listen(),
    ]
    assert both_paths(events) == ["hi", "second try"]


def test_action_reverted_with_nothing_to_revert() -> None:
    assert both_paths([ActionReverted(), UserUtteranceReverted(), user("hi")]) == ["hi"]


def test_unknown_and_garbage_event_dicts_are_ignored() -> None:
    events = [
        {"event": "session_started"},
        {"event": "user", "text": "hi"},
        {"event": "no_such_event", "text": "ignored"},
        {"text": "no event key"},
        {},
        {"event": None},
        {"event": 42, "text": "x"},
        {"event": ["user"], "text": "x"},
        {"event": "user"},
        {"event": "user", "text": 7},
        {"event": "user", "text": {"nested": "dict"}},
        {"event": "bot", "text": ["a", "list"]},
        {"event": "slot", "name": "genre", "value": "drama"},
        {"event": "action"},
        {"event": "bot", "text": "hello", "data": "not a dict", "metadata": None},
        None,
        42,
        "user",
        ["event", "user"],
        {"event": "user", "text": "how are you?"},
    ]
    assert dialogue_context(events) == ["hi", "hello", "how are you?"]


def test_garbage_user_events_still_count_for_rewinds() -> None:
    # A user event without usable text is still a user message for UserUtteranceReverted.
    events = [
        {"event": "user", "text": "hi"},
        {"event": "bot", "text": "hello"},
        {"event": "action", "name": "action_listen"},
        {"event": "user", "text": None},
        {"event": "bot", "text": "reverted"},
        {"event": "rewind"},
    ]
    assert dialogue_context(events) == ["hi", "hello"]


def test_not_a_sequence_of_events() -> None:
    assert dialogue_context("hello") == []  # type: ignore[arg-type]
    assert dialogue_context({"event": "user", "text": "hi"}) == []  # type: ignore[arg-type]


def test_hostile_mapping_is_ignored() -> None:
    class Hostile(dict):
        def get(self, *args: object) -> object:
            raise RuntimeError("boom")

    assert dialogue_context([Hostile(), {"event": "user", "text": "hi"}]) == ["hi"]


def test_objects_and_dicts_can_be_mixed() -> None:
    events: list = [user("hi"), {"event": "bot", "text": "hello"}, user("and you?")]
    assert dialogue_context(events) == ["hi", "hello", "and you?"]


class CountingEvents(list):
    """A list of events that counts how many of them are read, newest first."""

    read = 0

    def __reversed__(self):  # type: ignore[no-untyped-def]
        for event in super().__reversed__():
            self.read += 1
            yield event


def test_reading_stops_at_the_session_start_or_the_last_turn_wanted() -> None:
    old = [e for i in range(5_000) for e in exchange(f"old {i}", f"old reply {i}")]
    new = [e for i in range(5_000) for e in exchange(f"new {i}", f"new reply {i}")]
    events = CountingEvents([*start(), *old, *start(), *new])
    assert dialogue_context(events, max_turns=3) == ["new reply 4998", "new 4999", "new reply 4999"]
    assert events.read <= 4 * 4 + 1  # two exchanges and the start of a third, not 40,000
    events.read = 0
    context = dialogue_context(events)
    assert len(context) == 10_000 and context[0] == "new 0"
    assert events.read == len(new) + 2  # back to session_started, never into the old session
    # Iterators are read to their end (they cannot be read backwards), with the same result.
    assert dialogue_context(iter(events), max_turns=3) == context[-3:]
    assert dialogue_context((e for e in events), max_turns=3) == context[-3:]
    assert dialogue_context(deque(events), max_turns=3) == context[-3:]


def test_tracker_context_matches_the_tracker_json() -> None:
    events = [
        *start(),
        *exchange("hi", "hello"),
        *exchange("/greet", "Hello again!"),
        user("gibberish"),
        ActionExecuted("action_default_fallback"),
        BotUttered("Sorry?"),
        UserUtteranceReverted(),
        listen(),
        user("tell me about Jaws"),
        SlotSet("hred_response", "a shark movie"),
        *bot("a shark movie"),
        listen(),
        user("scary?"),
    ]
    tracker = DialogueStateTracker.from_events("u1", events, slots=DOMAIN.slots)
    tracker_json = tracker.current_state(EventVerbosity.ALL)
    context = tracker_context(tracker)
    assert context == ["hi", "hello Hello again!", "tell me about Jaws", "a shark movie", "scary?"]
    assert dialogue_context(tracker_json["events"]) == context
    assert dialogue_context(json.loads(json.dumps(tracker_json))["events"]) == context
    assert tracker_context(tracker, max_turns=2) == ["a shark movie", "scary?"]


def test_tracker_with_limited_event_history() -> None:
    events = [*start()] + [e for i in range(30) for e in exchange(f"u{i}", f"b{i}")]
    tracker = DialogueStateTracker.from_events(
        "u2", events, slots=DOMAIN.slots, max_event_history=20
    )
    context = tracker_context(tracker)
    assert context[-2:] == ["u29", "b29"]
    assert context == dialogue_context(tracker.current_state(EventVerbosity.ALL)["events"])


def _rasa_reference(tracker: DialogueStateTracker) -> list[str]:
    """Context computed from Rasa's own applied_events (no loops in these conversations)."""
    turns: list[tuple[str, str]] = []
    for event in tracker.applied_events():
        if isinstance(event, (UserUttered, BotUttered)):
            speaker = "user" if isinstance(event, UserUttered) else "bot"
            text = (event.text or "").strip()
            if not text or (speaker == "user" and text.startswith("/")):
                continue
            if turns and turns[-1][0] == speaker:
                turns[-1] = (speaker, f"{turns[-1][1]} {text}")
            else:
                turns.append((speaker, text))
    return [text for _, text in turns]


@pytest.mark.parametrize("seed", range(200))
def test_random_conversations_agree_with_rasa_applied_events(seed: int) -> None:
    rng = random.Random(seed)
    events: list[Event] = [*start()]
    for step in range(rng.randint(1, 40)):
        choice = rng.random()
        if choice < 0.35:
            events += [user(rng.choice([f"user {step}", "/greet", "  ", None])), listen()]
        elif choice < 0.7:
            events += bot(rng.choice([f"bot {step}", "", None]))
        elif choice < 0.8:
            events.append(UserUtteranceReverted())
        elif choice < 0.88:
            events.append(ActionReverted())
        elif choice < 0.92:
            events += start()
        elif choice < 0.94:
            events.append(Restarted())
        else:
            events.append(SlotSet("genre", f"genre {step}"))
    tracker = DialogueStateTracker.from_events("r", events, slots=DOMAIN.slots)
    context = tracker_context(tracker)
    assert context == _rasa_reference(tracker)
    assert dialogue_context(as_json(events)) == context
    for turns in range(5):  # reading stops early, with the same last turns
        assert tracker_context(tracker, max_turns=turns) == (context[-turns:] if turns else [])
