"""What the skill does with a verified request, and what it answers (pure: no Rasa, no Sanic).

The channel (:mod:`alexa_connector.channel`) does the I/O: it verifies the request, asks
:func:`plan_turn` what to do, runs the bot when the plan says so, and sends the response one
of the ``*_reply`` functions builds. Keeping the decisions here makes them testable without
a server or a trained bot.

==========================================  ===============================================
Alexa                                       the plan
==========================================  ===============================================
``LaunchRequest``                           ``launch_message``; or, with ``launch_intent``
                                            (e.g. ``/greet``), that message through the bot
``IntentRequest``, custom intent            the catch-all slot's text through the bot (a
                                            spoken button title sends the button's payload);
                                            an empty slot: ``unclear_message``, no Rasa call
``AMAZON.HelpIntent``                       ``help_message`` (or ``help_intent`` via the bot)
``AMAZON.StopIntent`` / ``CancelIntent``    ``stop_message``, session ends; the Rasa
                                            conversation gets ``session_end_intent``
``AMAZON.FallbackIntent`` and any other     ``fallback_intent`` (``/nlu_fallback``) through
``AMAZON.*`` intent                         the bot, so its fallback (e.g. the HRED) answers
``SessionEndedRequest``                     empty response (no speech allowed); the Rasa
                                            conversation gets ``session_end_intent``
                                            (``/session_start``: a new Rasa session)
anything else                               empty response, logged
==========================================  ===============================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alexa_connector.envelope import (
    AlexaRequestError,
    build_response,
    intent_name,
    request_type,
    session_attributes,
    user_text,
)
from alexa_connector.speech import (
    button_choices,
    match_button,
    speech_parts,
    text_to_ssml,
    to_ssml,
)

if TYPE_CHECKING:
    from alexa_connector.settings import AlexaSettings

__all__ = [
    "BUTTONS_ATTRIBUTE",
    "Converse",
    "Ignore",
    "Say",
    "Turn",
    "bot_reply",
    "failure_reply",
    "plan_turn",
    "say_reply",
]

#: Session attribute that carries the last reply's buttons (title and payload) to the next
#: turn, so that saying a title sends the payload.
BUTTONS_ATTRIBUTE = "rasa_buttons"

STOP_INTENTS = frozenset({"AMAZON.StopIntent", "AMAZON.CancelIntent"})
HELP_INTENT = "AMAZON.HelpIntent"
BUILTIN_PREFIX = "AMAZON."


@dataclass(frozen=True)
class Converse:
    """Send ``message`` through the bot and speak its whole reply; when the bot says
    nothing, speak ``empty_reply`` (``None``: the fallback message)."""

    message: str
    empty_reply: str | None = None


@dataclass(frozen=True)
class Say:
    """Answer without the bot: speak ``text`` (``None``: no speech at all). With
    ``end_session`` the Alexa session ends, and the Rasa conversation ends first."""

    text: str | None
    end_session: bool = False


@dataclass(frozen=True)
class Ignore:
    """A request type the skill does not handle: an empty answer, the session stays open."""

    request_type: str


Turn = Converse | Say | Ignore


def plan_turn(request_json: Mapping[str, Any], settings: AlexaSettings) -> Turn:
    """What to do with one verified request (the table above). Raises
    :class:`AlexaRequestError` for a request without a type, or an intent request without
    an intent name."""
    kind = request_type(request_json)
    if kind is None:
        raise AlexaRequestError("request has no type")
    if kind == "SessionEndedRequest":
        return Say(None, end_session=True)
    if kind == "LaunchRequest":
        if settings.launch_intent:
            return Converse(settings.launch_intent, empty_reply=settings.launch_message)
        return Say(settings.launch_message)
    if kind != "IntentRequest":
        return Ignore(kind)

    intent = intent_name(request_json)
    if intent is None:
        raise AlexaRequestError("intent request has no intent name")
    if intent in STOP_INTENTS:
        return Say(settings.stop_message, end_session=True)
    if intent == HELP_INTENT:
        if settings.help_intent:
            return Converse(settings.help_intent, empty_reply=settings.help_message)
        return Say(settings.help_message)
    if intent.startswith(BUILTIN_PREFIX):
        # AMAZON.FallbackIntent (nothing in the interaction model matched), and built-ins
        # such as AMAZON.NavigateHomeIntent that a chat has no use for: let the bot's own
        # fallback answer.
        if settings.fallback_intent:
            return Converse(settings.fallback_intent)
        return Say(settings.fallback_message)

    text = user_text(request_json, settings.slot_name)
    if text is None:
        return Say(settings.unclear_message)
    buttons = session_attributes(request_json).get(BUTTONS_ATTRIBUTE)
    return Converse(match_button(text, buttons) or text)


# --------------------------------------------------------------------------- replies


def _spoken(
    text: str,
    settings: AlexaSettings,
    attributes: Mapping[str, Any],
    *,
    end_session: bool = False,
) -> dict[str, Any]:
    return build_response(
        text_to_ssml(text),
        end_session=end_session,
        reprompt=text_to_ssml(settings.reprompt),
        session_attributes=attributes,
    )


def _without_buttons(request_json: Mapping[str, Any]) -> dict[str, Any]:
    attributes = session_attributes(request_json)
    attributes.pop(BUTTONS_ATTRIBUTE, None)
    return attributes


def say_reply(
    turn: Say, request_json: Mapping[str, Any], settings: AlexaSettings
) -> dict[str, Any]:
    """The response for a :class:`Say` turn. While the session stays open its attributes
    are kept, the last reply's buttons included (so after "help" or an empty slot a
    button title still works); a session that ends keeps nothing."""
    if turn.text is None:
        return build_response(None, end_session=turn.end_session)
    attributes = {} if turn.end_session else session_attributes(request_json)
    return _spoken(turn.text, settings, attributes, end_session=turn.end_session)


def bot_reply(
    turn: Converse,
    messages: Sequence[Mapping[str, Any]] | None,
    request_json: Mapping[str, Any],
    settings: AlexaSettings,
) -> dict[str, Any]:
    """The response for a :class:`Converse` turn: all of the bot's ``messages`` spoken, and
    their buttons remembered for the next turn.

    ``messages`` is ``None`` when the bot did not answer within ``reply_timeout``: the
    ``timeout_message`` is spoken. A reply with nothing to say gets ``turn.empty_reply`` or
    the ``fallback_message``. Both forget the old buttons: the late or empty reply may
    ask something else.
    """
    if messages is None:
        return _spoken(settings.timeout_message, settings, _without_buttons(request_json))
    if not speech_parts(messages):
        text = turn.empty_reply or settings.fallback_message
        return _spoken(text, settings, _without_buttons(request_json))
    attributes = _without_buttons(request_json)
    choices = button_choices(messages)
    if choices:
        attributes[BUTTONS_ATTRIBUTE] = choices
    return build_response(
        to_ssml(messages),
        end_session=False,
        reprompt=text_to_ssml(settings.reprompt),
        session_attributes=attributes,
    )


def failure_reply(settings: AlexaSettings) -> dict[str, Any]:
    """What the user hears when answering failed unexpectedly (never a 500)."""
    return _spoken(settings.fallback_message, settings, {})
