"""Alexa's request and response envelopes as plain JSON (no Rasa, no Sanic).

Reading requests:

- :func:`alexa_user_id` - who is speaking: a recognised voice profile
  (``context.System.person.personId``) when Alexa sends one, else the Amazon account
  (``session.user.userId``, else ``context.System.user.userId``). It becomes the Rasa
  sender id, so every Alexa user (and every recognised person on a shared device) has a
  tracker of their own.
- :func:`user_text` - the free text of an ``IntentRequest`` from its catch-all slot.
- :func:`session_attributes` and :func:`message_metadata` - what the skill keeps between
  turns, and what Rasa stores with the user's event.

Writing responses: :func:`build_response` wraps speech in Alexa's response envelope with
real booleans. The speech itself comes from :mod:`alexa_connector.speech`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "AlexaRequestError",
    "alexa_user_id",
    "build_response",
    "intent_name",
    "message_metadata",
    "request_type",
    "session_attributes",
    "user_text",
    "value_at",
]


class AlexaRequestError(ValueError):
    """A request lacks something the skill needs (the channel answers 400)."""


def value_at(data: Any, *keys: str) -> Any:
    """The value at a path of keys through nested JSON objects, or ``None`` when some step
    is missing or not an object (request JSON is untrusted: any shape may arrive)."""
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _non_empty_str(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


# --------------------------------------------------------------------------- reading requests


def request_type(request_json: Mapping[str, Any]) -> str | None:
    """``request.type`` (``LaunchRequest``, ``IntentRequest``, ...) or ``None``."""
    return _non_empty_str(value_at(request_json, "request", "type"))


def intent_name(request_json: Mapping[str, Any]) -> str | None:
    """``request.intent.name`` of an ``IntentRequest`` or ``None``."""
    return _non_empty_str(value_at(request_json, "request", "intent", "name"))


def alexa_user_id(request_json: Mapping[str, Any]) -> str:
    """The Rasa sender id for an Alexa request.

    ``context.System.person.personId`` (a recognised voice profile) comes first, then
    ``session.user.userId``, then ``context.System.user.userId`` (requests outside a
    session, e.g. from the AudioPlayer, carry only the latter). Raises
    :class:`AlexaRequestError` when none is present.
    """
    for path in (
        ("context", "System", "person", "personId"),
        ("session", "user", "userId"),
        ("context", "System", "user", "userId"),
    ):
        value = _non_empty_str(value_at(request_json, *path))
        if value is not None:
            return value
    raise AlexaRequestError("request has no user id")


def _slot_value(slot: Any) -> str | None:
    if not isinstance(slot, Mapping):
        return None
    value = _non_empty_str(slot.get("value"))
    if value is None:  # the newer slot format: {"slotValue": {"type": "Simple", "value": ...}}
        value = _non_empty_str(value_at(slot, "slotValue", "value"))
    return value


def user_text(request_json: Mapping[str, Any], slot_name: str = "text") -> str | None:
    """What the user said, from an ``IntentRequest``'s catch-all slot.

    The slot called ``slot_name`` comes first; when it is absent or empty, the first other
    slot that has a value is used (so an interaction model with a differently named slot
    still works). ``None`` when no slot has a value (e.g. a built-in intent).
    """
    slots = value_at(request_json, "request", "intent", "slots")
    if not isinstance(slots, Mapping):
        return None
    value = _slot_value(slots.get(slot_name))
    if value is not None:
        return value
    for name, slot in slots.items():
        if name == slot_name:
            continue
        value = _slot_value(slot)
        if value is not None:
            return value
    return None


def session_attributes(request_json: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``session.attributes`` (``{}`` when absent or malformed): what the skill's
    previous response asked Alexa to keep."""
    attributes = value_at(request_json, "session", "attributes")
    return dict(attributes) if isinstance(attributes, Mapping) else {}


def message_metadata(request_json: Mapping[str, Any]) -> dict[str, Any]:
    """The ``UserMessage`` metadata for a request (Rasa stores it with the user's event)."""
    new_session = value_at(request_json, "session", "new")
    return {
        "alexa": {
            "request_type": request_type(request_json),
            "request_id": value_at(request_json, "request", "requestId"),
            "session_id": value_at(request_json, "session", "sessionId"),
            "new_session": new_session if isinstance(new_session, bool) else None,
            "locale": value_at(request_json, "request", "locale"),
            "intent": intent_name(request_json),
        }
    }


# --------------------------------------------------------------------------- responses


def _speech(ssml: str) -> dict[str, str]:
    return {"type": "SSML", "ssml": ssml}


def build_response(
    ssml: str | None,
    *,
    end_session: bool,
    reprompt: str | None = None,
    session_attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An Alexa response envelope.

    ``ssml`` and ``reprompt`` are complete ``<speak>`` documents. With ``ssml=None`` there
    is no speech at all (as a ``SessionEndedRequest`` requires): ``{"version": "1.0",
    "response": {}}``. The reprompt is only sent while the session stays open.
    """
    if ssml is None:
        return {"version": "1.0", "response": {}}
    response: dict[str, Any] = {"outputSpeech": _speech(ssml)}
    if reprompt and not end_session:
        response["reprompt"] = {"outputSpeech": _speech(reprompt)}
    response["shouldEndSession"] = bool(end_session)
    return {
        "version": "1.0",
        "sessionAttributes": dict(session_attributes or {}),
        "response": response,
    }
