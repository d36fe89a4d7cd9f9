"""Rasa's NLG request and the answers its callback client accepts (``rasa/core/nlg/callback.py``).

Rasa POSTs ``{"response": "utter_x", "id": .., "arguments": {..}, "tracker": {.. "events":
[..], "slots": {..}}, "channel": {"name": "rest"}}``. The body comes from the network, so it is
validated here, before anything reads it; a bad one is a ``BadRequest`` with a message that
says what is wrong. A missing ``channel``, ``arguments`` or ``slots`` means none (Rasa always
sends them).

The tracker holds every event since the conversation began: 20,000 turns are about 45 MB of
JSON, of which a reply needs the last few dozen events. So the body is first read by msgspec
into a shape where each event stays a slice of the body (``msgspec.Raw``): the whole body is
checked (msgspec's JSON is strict RFC 8259), but no event becomes Python objects until it is
read, and only the last ``max_events`` slices are kept. A body that reading refuses is read
again as ``json.loads`` reads it (``_read_exact``: the same grammar, so ``NaN`` or lone
surrogates are accepted, and the same error messages), with the events decoded one at a time
so that a long one costs its size in time, not ten times its size in memory.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from json.decoder import JSONDecodeError
from typing import Any, overload

import msgspec

_DECODER = json.JSONDecoder()
# json's C scanner (one value at an index), as JSONDecoder.__init__ sets it; typeshed lacks it.
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_SPACE = re.compile(r"[ \t\n\r]*")


class BadRequest(Exception):
    """A request the server refuses with ``status`` and a JSON ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class NLGRequest:
    """The validated parts of Rasa's NLG request."""

    response: str
    events: Sequence[Any]  # oldest first; possibly decoded only when read (``RawEvents``)
    slots: dict[str, Any]
    channel: str | None
    arguments: dict[str, Any]


def parse_request(body: bytes, *, max_events: int) -> NLGRequest:
    """Validate an NLG request body; ``BadRequest`` says what is wrong with it. Only the last
    ``max_events`` events are kept."""
    if not body:
        raise BadRequest("empty body: expected a JSON object")
    try:
        payload = _read_body(body, max_events)
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 text") from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply") from None
    except ValueError as error:
        raise BadRequest(f"invalid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise BadRequest(f"the body must be a JSON object, not {_json_type(payload)}")
    response = payload.get("response")
    if not isinstance(response, str) or not response.strip():
        raise BadRequest("'response' must be a non-empty string (the response's name)")
    tracker = payload.get("tracker")
    if not isinstance(tracker, dict):
        raise BadRequest(f"'tracker' must be an object, not {_json_type(tracker)}")
    events = tracker.get("events")
    if not isinstance(events, (list, deque, RawEvents)):
        raise BadRequest(f"'tracker.events' must be a list, not {_json_type(events)}")
    slots = tracker.get("slots")
    if slots is None:
        slots = {}
    elif not isinstance(slots, dict):
        raise BadRequest(f"'tracker.slots' must be an object, not {_json_type(slots)}")
    channel = payload.get("channel")
    if channel is None:
        name = None
    elif isinstance(channel, dict):
        name = channel.get("name")
        if name is not None and not isinstance(name, str):
            raise BadRequest(f"'channel.name' must be a string, not {_json_type(name)}")
    else:
        raise BadRequest(f"'channel' must be an object, not {_json_type(channel)}")
    arguments = payload.get("arguments")
    if arguments is None:
        arguments = {}
    elif not isinstance(arguments, dict):
        raise BadRequest(f"'arguments' must be an object, not {_json_type(arguments)}")
    if isinstance(events, deque):
        events = list(events)
    return NLGRequest(response, events, slots, name, arguments)


class RawEvents(Sequence[Any]):
    """Tracker events kept as slices of the request body, each decoded when it is read (the
    context reads the newest few)."""

    def __init__(self, raws: list[msgspec.Raw]) -> None:
        self._raws = raws

    def __len__(self) -> int:
        return len(self._raws)

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> RawEvents: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return RawEvents(self._raws[index])
        try:
            return _value(self._raws[index])
        except RecursionError:  # msgspec read it deeper in the stack: a bad entry, as in Rasa's
            return None


class _Tracker(msgspec.Struct):
    events: list[msgspec.Raw]
    slots: msgspec.Raw = msgspec.Raw(b"null")


class _Request(msgspec.Struct):
    """The members ``parse_request`` reads, each left as JSON text for ``json.loads``, so that
    its values are exactly ``json.loads``'s; other members are checked and skipped."""

    tracker: _Tracker
    response: msgspec.Raw = msgspec.Raw(b"null")
    channel: msgspec.Raw = msgspec.Raw(b"null")
    arguments: msgspec.Raw = msgspec.Raw(b"null")


_FAST_DECODER = msgspec.json.Decoder(_Request)


def _read_body(body: bytes, max_events: int) -> Any:
    """``json.loads`` of the UTF-8 ``body`` (the parts ``parse_request`` reads), except that
    ``tracker.events`` is a sequence of its last ``max_events`` events."""
    if not body.isascii():
        body.decode("utf-8")  # msgspec does not check the UTF-8 of what it skips
    try:
        request = _FAST_DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError):  # refused, or not the shape Rasa sends
        return _read_exact(body.decode("utf-8"), max_events)
    events = request.tracker.events
    return {
        "response": _value(request.response),
        "tracker": {
            "events": RawEvents(events[-max_events:] if max_events else []),
            "slots": _value(request.tracker.slots),
        },
        "channel": _value(request.channel),
        "arguments": _value(request.arguments),
    }


def _value(raw: msgspec.Raw) -> Any:
    return json.loads(bytes(raw))


def _read_exact(text: str, max_events: int) -> Any:
    """``json.loads(text)``, except that ``tracker.events`` is a deque of its last
    ``max_events`` events (decoded one at a time)."""
    start = _skip_space(text, 0)
    if not text.startswith("{", start):
        return json.loads(text)  # not an object: the caller says so

    def member(key: str, at: int) -> tuple[Any, int]:
        if key == "tracker" and text.startswith("{", at):
            return _read_object(text, at, tracker_member)
        return _DECODER.raw_decode(text, at)

    def tracker_member(key: str, at: int) -> tuple[Any, int]:
        if key == "events" and text.startswith("[", at):
            return _read_tail(text, at, max_events)
        return _DECODER.raw_decode(text, at)

    payload, end = _read_object(text, start, member)
    end = _skip_space(text, end)
    if end != len(text):
        raise JSONDecodeError("Extra data", text, end)
    return payload


def _skip_space(text: str, at: int) -> int:
    return _SPACE.match(text, at).end()  # type: ignore[union-attr]  # it matches "" too


def _read_object(
    text: str, at: int, read_member: Callable[[str, int], tuple[Any, int]]
) -> tuple[dict[str, Any], int]:
    """The JSON object at ``text[at] == "{"`` and the index after it, as ``json``'s own
    ``JSONObject`` reads one; ``read_member(key, index)`` decodes each value."""
    members: dict[str, Any] = {}
    at = _skip_space(text, at + 1)
    if text.startswith("}", at):
        return members, at + 1
    while True:
        if not text.startswith('"', at):
            raise JSONDecodeError("Expecting property name enclosed in double quotes", text, at)
        key, at = _DECODER.raw_decode(text, at)
        at = _skip_space(text, at)
        if not text.startswith(":", at):
            raise JSONDecodeError("Expecting ':' delimiter", text, at)
        members[key], at = read_member(key, _skip_space(text, at + 1))
        at = _skip_space(text, at)
        if text.startswith("}", at):
            return members, at + 1
        if not text.startswith(",", at):
            raise JSONDecodeError("Expecting ',' delimiter", text, at)
        at = _skip_space(text, at + 1)


def _read_tail(text: str, at: int, keep: int) -> tuple[deque[Any], int]:
    """The last ``keep`` items of the JSON array at ``text[at] == "["``, each decoded and
    dropped in turn, and the index after the array. (The loop runs once per event: it calls
    the C scanner itself and takes Rasa's ``", "`` between events without a regex.)"""
    items: deque[Any] = deque(maxlen=keep)
    at = _skip_space(text, at + 1)
    if text.startswith("]", at):
        return items, at + 1
    while True:
        try:
            item, at = _SCAN(text, at)
        except StopIteration as error:
            raise JSONDecodeError("Expecting value", text, error.value) from None
        items.append(item)
        if text.startswith(", ", at) and not text[at + 2 : at + 3].isspace():
            at += 2
            continue
        at = _skip_space(text, at)
        if text.startswith("]", at):
            return items, at + 1
        if not text.startswith(",", at):
            raise JSONDecodeError("Expecting ',' delimiter", text, at)
        at = _skip_space(text, at + 1)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def conform_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """A rendered response in the shape Rasa's callback client accepts: ``text`` is a string
    or absent, ``custom`` an object or absent (a ``None`` of either is dropped, any other
    text value becomes its string). Everything else is kept as Rasa's templated NLG gives it."""
    out = dict(message)
    for key in ("text", "custom"):
        if key in out and out[key] is None:
            del out[key]
    if "text" in out and not isinstance(out["text"], str):
        out["text"] = str(out["text"])
    if "custom" in out and not isinstance(out["custom"], dict):
        raise ValueError(f"the response's 'custom' is not an object: {out['custom']!r}")
    return out
