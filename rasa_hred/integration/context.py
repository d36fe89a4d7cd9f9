"""Turn a Rasa conversation into an HRED session context (a list of turn texts).

The policy (from a live ``DialogueStateTracker``) and the NLG server (from the tracker JSON
that Rasa posts) must see the same context for the same conversation, so both use these pure
functions. Events may be Rasa ``Event`` objects or event dicts as in the tracker JSON
(``tracker.current_state(EventVerbosity.ALL)["events"]``); both give the same result. A corpus
of past conversations (``integration.tracker_corpus``) cuts each one with ``split_sessions``
and reads every part with ``dialogue_context``, so it trains on what the policy would see.

Rules:

- **Only the current session counts.** Everything before the last ``session_started``
  (``SessionStarted``) or ``restart`` (``Restarted``) event is dropped, as in Rasa's
  ``DialogueStateTracker.applied_events``.
- **User and bot texts, in order.** ``user`` (``UserUttered``) and ``bot`` (``BotUttered``)
  events contribute their ``text``; ``action_listen``, other actions, slots and every other
  event type contribute nothing.
- **Rewinds follow Rasa.** ``rewind`` (``UserUtteranceReverted``) removes everything back to
  and including the last user message and then back to and including the action before it
  (the ``action_listen``), so the reverted user message and what the bot said after it are
  gone. ``undo`` (``ActionReverted``) removes everything back to and including the last
  action, i.e. that action's bot utterance(s). These are the semantics of
  ``DialogueStateTracker.applied_events``; the form-loop pruning that method also does is
  a featurization detail for policies and is not applied: the context is what was said.
- **Text hygiene.** Texts are stripped; empty, whitespace-only, ``None`` and non-string
  texts are dropped. A user text starting with ``/`` (``/greet``, ``/inform{"genre":
  "drama"}``) is a button payload or an intent trigger, not something the user said: Rasa
  parses it as intent syntax, and the tracker does not record the button's title. Feeding
  ``/inform{...}`` to the HRED would give it a token sequence it never saw in training, so
  such messages contribute no text (the bot's turns around them remain).
- **Alternating turns.** Consecutive texts of one speaker (two bot utterances from one
  prediction loop, a user who typed twice, or bot turns around a skipped payload) are
  merged into one turn, joined with a space, so the context alternates speakers like the
  HRED's training dialogues.
- **``max_turns``** keeps the last N turns after merging (``None``: all).
- **Untrusted input.** The NLG server feeds JSON from the network (it validates the overall
  shape itself). Entries that are not events, dicts without a known ``"event"`` name,
  missing keys and wrong types are ignored; nothing here raises on bad events.
- **Bounded work.** The events are read newest first, and reading stops at the current
  session's start or once ``max_turns`` turns are complete, so a conversation of 20,000
  turns costs what its last turns do. Callers that take events from the network bound how
  many they pass (the NLG server's ``--max-events``).

The returned strings are the raw texts, not tokenized.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Reversible
from typing import TYPE_CHECKING, Any

from rasa.shared.core.events import (
    ActionExecuted,
    ActionReverted,
    BotUttered,
    Event,
    Restarted,
    SessionStarted,
    UserUtteranceReverted,
    UserUttered,
)

if TYPE_CHECKING:
    from rasa.shared.core.trackers import DialogueStateTracker

__all__ = ["INTENT_PREFIX", "dialogue_context", "split_sessions", "tracker_context"]

#: A user text starting with this is an intent trigger / button payload (Rasa's syntax).
INTENT_PREFIX = "/"

# Event kinds. Markers (user, bot, action) are kept so that rewinds can remove them exactly
# as Rasa does; the control kinds act on the markers.
_USER = "user"
_BOT = "bot"
_ACTION = "action"
_RESET = "reset"
_UNDO = "undo"
_REWIND = "rewind"

_DICT_KINDS: dict[str, str] = {
    UserUttered.type_name: _USER,
    BotUttered.type_name: _BOT,
    ActionExecuted.type_name: _ACTION,
    SessionStarted.type_name: _RESET,
    Restarted.type_name: _RESET,
    ActionReverted.type_name: _UNDO,
    UserUtteranceReverted.type_name: _REWIND,
}

_OBJECT_KINDS: tuple[tuple[type[Event], str], ...] = (
    (UserUttered, _USER),
    (BotUttered, _BOT),
    (ActionExecuted, _ACTION),
    (SessionStarted, _RESET),
    (Restarted, _RESET),
    (ActionReverted, _UNDO),
    (UserUtteranceReverted, _REWIND),
)


def _classify(event: Any) -> tuple[str, Any] | None:
    """Returns ``(kind, text)`` for an event that matters, ``None`` for any other."""
    if isinstance(event, Event):
        for cls, object_kind in _OBJECT_KINDS:
            if isinstance(event, cls):
                return object_kind, getattr(event, "text", None)
        return None
    if isinstance(event, Mapping):
        try:
            name = event.get("event")
            kind = _DICT_KINDS.get(name) if isinstance(name, str) else None
            if kind is None:
                return None
            return kind, event.get("text") if kind in (_USER, _BOT) else None
        except Exception:  # a hostile Mapping; the input is untrusted
            return None
    return None


def _newest_first(events: Iterable[Any]) -> Iterator[Any]:
    """The events from the newest back, without copying a sequence or deque."""
    if isinstance(events, Reversible):
        return reversed(events)
    return reversed(list(events))  # an iterator has to be read to its end


def _turn_text(kind: str, text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    text = text.strip()
    if not text or (kind == _USER and text.startswith(INTENT_PREFIX)):
        return None
    return text


def dialogue_context(
    events: Iterable[Event | Mapping[str, Any]], *, max_turns: int | None = None
) -> list[str]:
    """Returns the HRED context (alternating-speaker turn texts) of a conversation.

    Args:
        events: the conversation's events, oldest first: Rasa ``Event`` objects or event
            dicts as in the tracker JSON (mixed is fine). Bad entries are ignored.
        max_turns: keep only the last ``max_turns`` turns (``None``: all).

    Returns:
        The turn texts, oldest first; see the module docstring for the rules.

    Raises:
        ValueError: if ``max_turns`` is negative.
    """
    if max_turns is not None and max_turns < 0:
        raise ValueError(f"max_turns must be >= 0 or None, got {max_turns}")
    if isinstance(events, (str, bytes, Mapping)) or max_turns == 0:
        return []  # not a sequence of events, or nothing wanted
    # Read newest first, a rewind or undo is a debt that the markers before it pay: each is
    # dropped until one of the owed kind settles it (a rewind owes a user marker, then an
    # action). An earlier rewind acted first, on what was there then: its debts go in front.
    owed: deque[str] = deque()
    turns: list[tuple[str, list[str]]] = []  # newest first, each turn's texts newest first
    for event in _newest_first(events):
        classified = _classify(event)
        if classified is None:
            continue
        kind, raw = classified
        if kind == _RESET:
            break
        if kind == _UNDO:
            owed.appendleft(_ACTION)
        elif kind == _REWIND:
            owed.extendleft((_ACTION, _USER))  # the user message, then the action before it
        elif owed:
            if kind == owed[0]:
                owed.popleft()
        elif kind != _ACTION and (text := _turn_text(kind, raw)) is not None:
            if turns and turns[-1][0] == kind:
                turns[-1][1].append(text)
            elif len(turns) == max_turns:
                break  # the oldest turn wanted is complete
            else:
                turns.append((kind, [text]))
    return [" ".join(reversed(texts)) for _, texts in reversed(turns)]


def split_sessions(
    events: Iterable[Event | Mapping[str, Any]],
) -> list[list[Event | Mapping[str, Any]]]:
    """A whole conversation cut where its context starts afresh (``session_started``,
    ``restart``: the events that end ``dialogue_context``'s reading), oldest first and without
    those events; ``dialogue_context`` of each part is that session's context. Parts may be
    empty or hold no text (the ``action_session_start`` before ``session_started``)."""
    parts: list[list[Event | Mapping[str, Any]]] = [[]]
    for event in events:
        classified = _classify(event)
        if classified is not None and classified[0] == _RESET:
            parts.append([])
        else:
            parts[-1].append(event)
    return parts


def tracker_context(tracker: DialogueStateTracker, *, max_turns: int | None = None) -> list[str]:
    """Returns the HRED context of a tracker's conversation (see ``dialogue_context``)."""
    return dialogue_context(tracker.events, max_turns=max_turns)
