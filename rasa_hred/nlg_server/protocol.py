"""Rasa's NLG request and the answers its callback client accepts (``rasa/core/nlg/callback.py``).

Rasa POSTs ``{"response": "utter_x", "id": .., "arguments": {..}, "tracker": {.. "events":
[..], "slots": {..}}, "channel": {"name": "rest"}}``. The body comes from the network, so it is
validated here, before anything reads it; a bad one is a ``BadRequest`` with a message that
says what is wrong. A missing ``channel``, ``arguments`` or ``slots`` means none (Rasa always
sends them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class BadRequest(Exception):
    """A request the server refuses with ``status`` and a JSON ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class NLGRequest:
    """The validated parts of Rasa's NLG request."""

    response: str
    events: list[Any]
    slots: dict[str, Any]
    channel: str | None
    arguments: dict[str, Any]


def parse_request(body: bytes, *, max_events: int) -> NLGRequest:
    """Validate an NLG request body; ``BadRequest`` says what is wrong with it. Only the last
    ``max_events`` events are kept."""
    if not body:
        raise BadRequest("empty body: expected a JSON object")
    try:
        payload = json.loads(body)
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
    if not isinstance(events, list):
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
    if max_events >= 0 and len(events) > max_events:
        events = events[-max_events:] if max_events else []
    return NLGRequest(response, events, slots, name, arguments)


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
