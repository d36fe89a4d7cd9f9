"""Rasa input channel for Amazon Alexa custom skills hosted as a web service.

``credentials.yml``::

    alexa_connector.AlexaConnector:
      skill_id: "amzn1.ask.skill.00000000-0000-0000-0000-000000000000"

Alexa posts to ``/webhooks/alexa/webhook``; ``GET /webhooks/alexa/`` is a health check.
Every request is verified (certificate chain, signature of the raw body, timestamp, skill
id) before anything else; a request that fails is answered 400 and never reaches Rasa.

How Alexa requests map onto Rasa (see docs/alexa.md for the reasons):

==========================================  ===============================================
Alexa                                       Rasa / the answer
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

All bot messages of one turn are spoken, in order (:func:`alexa_connector.speech.to_ssml`).
An empty bot reply (or a failure inside Rasa) is answered with ``fallback_message``. The
bot gets ``reply_timeout`` seconds (default 6, Alexa waits 8): after that the user hears
``timeout_message`` while Rasa finishes the turn in the background, so the late reply
still lands in the tracker.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from rasa.core.channels.channel import CollectingOutputChannel, InputChannel, UserMessage
from rasa.shared.exceptions import RasaException
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from alexa_connector.speech import (
    AlexaRequestError,
    alexa_user_id,
    build_response,
    button_choices,
    intent_name,
    match_button,
    request_type,
    speech_parts,
    text_to_ssml,
    to_ssml,
    user_text,
)
from alexa_connector.verification import (
    MAX_TIMESTAMP_TOLERANCE_S,
    RequestVerifier,
    VerificationError,
    verify_application_id,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BUTTONS_ATTRIBUTE",
    "MAX_BODY_BYTES",
    "AlexaConfigurationError",
    "AlexaConnector",
    "AlexaOutputChannel",
    "AlexaSettings",
]

#: Requests with a larger body are refused before any cryptography is done.
MAX_BODY_BYTES = 256 * 1024
#: Alexa gives up on a skill after about 8 seconds.
ALEXA_DEADLINE_S = 8.0
#: On server stop, turns that outlived their reply timeout get this long to finish.
SHUTDOWN_GRACE_S = 10.0
#: Session attribute that carries the last reply's buttons (title and payload) to the next
#: turn, so that saying a title sends the payload.
BUTTONS_ATTRIBUTE = "rasa_buttons"

STOP_INTENTS = frozenset({"AMAZON.StopIntent", "AMAZON.CancelIntent"})
HELP_INTENT = "AMAZON.HelpIntent"
BUILTIN_PREFIX = "AMAZON."

OnNewMessage = Callable[[UserMessage], Awaitable[Any]]


class AlexaConfigurationError(RasaException, ValueError):
    """The ``alexa_connector.AlexaConnector`` credentials are not usable."""


class AlexaOutputChannel(CollectingOutputChannel):
    """Collects the bot's messages of one turn; named ``alexa`` so that domain responses
    with ``channel: alexa`` are chosen for it."""

    @classmethod
    def name(cls) -> str:
        return "alexa"

    async def send_elements(
        self, recipient_id: str, elements: Iterable[dict[str, Any]], **kwargs: Any
    ) -> None:
        # A carousel cannot be spoken: keep it as it is (the speech conversion drops it)
        # instead of Rasa's default, which would turn every card into "title : subtitle".
        await self._persist_message({"recipient_id": recipient_id, "elements": list(elements)})


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AlexaSettings:
    """The channel's credentials (``credentials.yml`` keys), validated."""

    skill_id: str | None = None
    verify_signature: bool = True
    timestamp_tolerance: float = MAX_TIMESTAMP_TOLERANCE_S
    trusted_roots: str | None = None
    certificate_cache_dir: str | None = None
    reply_timeout: float = 6.0
    slot_name: str = "text"
    reprompt: str | None = "Anything else?"
    launch_message: str = "Hi! Let's talk about movies. What have you watched lately?"
    launch_intent: str | None = None
    help_message: str = (
        "Just talk to me: ask for a movie recommendation, or tell me about a film you "
        "liked. Say stop when you are done."
    )
    help_intent: str | None = None
    stop_message: str = "Goodbye! Enjoy your next movie."
    fallback_message: str = "Sorry, I don't know what to say to that. Could you put it another way?"
    fallback_intent: str | None = "/nlu_fallback"
    unclear_message: str = "Sorry, I didn't catch that. Could you say it again?"
    timeout_message: str = "Sorry, I'm still thinking about that. Please ask me again in a moment."
    session_end_intent: str | None = "/session_start"

    @classmethod
    def from_mapping(cls, credentials: Mapping[str, Any] | None) -> AlexaSettings:
        """Validate ``credentials`` (``None``: all defaults) into settings; every problem is
        an :class:`AlexaConfigurationError` that names the key."""
        if credentials is None:
            credentials = {}
        if not isinstance(credentials, Mapping):
            raise AlexaConfigurationError(
                "alexa_connector.AlexaConnector: credentials must be a mapping of keys to "
                f"values, got {type(credentials).__name__}"
            )
        known = {field.name for field in fields(cls)}
        unknown = sorted(str(key) for key in credentials if key not in known)
        if unknown:
            raise AlexaConfigurationError(
                f"alexa_connector.AlexaConnector: unknown credential key(s) "
                f"{', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for field in fields(cls):
            if field.name in credentials:
                values[field.name] = _CONVERTERS[field.name](field.name, credentials[field.name])
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        if self.verify_signature and not self.skill_id:
            raise AlexaConfigurationError(
                "alexa_connector.AlexaConnector: 'skill_id' is required (your skill's "
                "application id, amzn1.ask.skill....); only local development may set "
                "'verify_signature: false' instead"
            )
        if not 0 < self.timestamp_tolerance <= MAX_TIMESTAMP_TOLERANCE_S:
            raise AlexaConfigurationError(
                "alexa_connector.AlexaConnector: 'timestamp_tolerance' must be more than 0 "
                f"and at most {MAX_TIMESTAMP_TOLERANCE_S:g} seconds (Amazon's limit), got "
                f"{self.timestamp_tolerance:g}"
            )
        if not 0 < self.reply_timeout < ALEXA_DEADLINE_S:
            raise AlexaConfigurationError(
                "alexa_connector.AlexaConnector: 'reply_timeout' must be more than 0 and "
                f"less than {ALEXA_DEADLINE_S:g} seconds (Alexa stops waiting after about "
                f"8 s), got {self.reply_timeout:g}"
            )


def _error(key: str, expected: str, value: Any) -> AlexaConfigurationError:
    return AlexaConfigurationError(
        f"alexa_connector.AlexaConnector: '{key}' must be {expected}, got {value!r}"
    )


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):  # e.g. from ${ENV_VAR} substitution
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
    raise _error(key, "true or false", value)


def _as_seconds(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _error(key, "a number of seconds", value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _error(key, "a number of seconds", value) from None
    if not math.isfinite(number):
        raise _error(key, "a finite number of seconds", value)
    return number


def _as_text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _error(key, "a non-empty string", value)
    return value.strip()


def _as_optional_text(key: str, value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _as_text(key, value)


_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "skill_id": _as_optional_text,
    "verify_signature": _as_bool,
    "timestamp_tolerance": _as_seconds,
    "trusted_roots": _as_optional_text,
    "certificate_cache_dir": _as_optional_text,
    "reply_timeout": _as_seconds,
    "slot_name": _as_text,
    "reprompt": _as_optional_text,
    "launch_message": _as_text,
    "launch_intent": _as_optional_text,
    "help_message": _as_text,
    "help_intent": _as_optional_text,
    "stop_message": _as_text,
    "fallback_message": _as_text,
    "fallback_intent": _as_optional_text,
    "unclear_message": _as_text,
    "timeout_message": _as_text,
    "session_end_intent": _as_optional_text,
}


# --------------------------------------------------------------------------- the channel


class AlexaConnector(InputChannel):
    """Alexa custom-skill requests in, spoken replies out; one Rasa tracker per Alexa user.

    ``AlexaConnector(skill_id, **settings)`` takes the same keys as ``credentials.yml``
    (see :class:`AlexaSettings`).
    """

    @classmethod
    def name(cls) -> str:
        return "alexa"

    @classmethod
    def from_credentials(cls, credentials: dict[str, Any] | None) -> AlexaConnector:
        return cls(settings=AlexaSettings.from_mapping(credentials))

    def __init__(
        self,
        skill_id: str | None = None,
        *,
        settings: AlexaSettings | None = None,
        **options: Any,
    ) -> None:
        if settings is None:
            settings = AlexaSettings.from_mapping({"skill_id": skill_id, **options})
        elif skill_id is not None or options:
            raise TypeError("pass either settings or skill_id/options, not both")
        else:
            settings._check()
        self.settings = settings
        self.verifier: RequestVerifier | None = None
        if settings.verify_signature:
            try:
                self.verifier = RequestVerifier(
                    settings.skill_id or "",
                    trusted_roots=settings.trusted_roots,
                    timestamp_tolerance=settings.timestamp_tolerance,
                    certificate_cache_dir=settings.certificate_cache_dir,
                )
            except ValueError as exc:  # unreadable trusted_roots and the like
                raise AlexaConfigurationError(f"alexa_connector.AlexaConnector: {exc}") from exc
        else:
            logger.warning(
                "Alexa request verification is DISABLED (verify_signature: false): anyone "
                "who can reach /webhooks/alexa/webhook can talk to the bot as any user. "
                "Use this for local development only."
            )
        # Turns still running after their reply timeout; kept so they are not garbage
        # collected before they finish.
        self._pending: set[asyncio.Task] = set()

    # -- Sanic -----------------------------------------------------------------------------

    def blueprint(self, on_new_message: OnNewMessage) -> Blueprint:
        module = inspect.getmodule(self)
        alexa_webhook = Blueprint(
            f"alexa_webhook_{type(self).__name__}", module.__name__ if module else None
        )

        @alexa_webhook.route("/", methods=["GET"])
        async def health(request: Request) -> HTTPResponse:
            return response.json({"status": "ok"})

        @alexa_webhook.route("/webhook", methods=["POST"])
        async def receive(request: Request) -> HTTPResponse:
            return await self.handle_http(request.headers, request.body, on_new_message)

        @alexa_webhook.listener("before_server_stop")
        async def finish_pending(app: Any, loop: Any) -> None:
            if not await self.wait_for_pending(SHUTDOWN_GRACE_S):
                logger.warning("Stopping with %d Alexa turn(s) still running", self.pending)

        return alexa_webhook

    async def handle_http(
        self, headers: Mapping[str, str], body: bytes | None, on_new_message: OnNewMessage
    ) -> HTTPResponse:
        """Verify one raw request and answer it (400 for anything that fails verification
        or is malformed; never 500)."""
        body = body or b""
        try:
            if len(body) > MAX_BODY_BYTES:
                raise VerificationError("request body is too large")
            request_json = await self._verified_json(headers, body)
            alexa_user_id(request_json)  # fail early (400) when there is nobody to talk to
        except (VerificationError, AlexaRequestError) as exc:
            reason = exc.reason if isinstance(exc, VerificationError) else str(exc)
            logger.warning("Rejected an Alexa request: %s", reason)
            return response.json({"error": reason}, status=400)

        try:
            reply = await self.handle_request(request_json, on_new_message)
        except AlexaRequestError as exc:
            logger.warning("Rejected an Alexa request: %s", exc)
            return response.json({"error": str(exc)}, status=400)
        except Exception:
            logger.exception("Failed to answer an Alexa request")
            reply = self._speak(self.settings.fallback_message, end_session=False)
        return response.json(reply)

    async def _verified_json(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        if self.verifier is not None:
            return await self.verifier.verify(headers, body)
        # Verification disabled (local development): still refuse what is not a request.
        try:
            request_json = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise VerificationError("request body is not JSON") from None
        if not isinstance(request_json, dict):
            raise VerificationError("request body is not a JSON object")
        if not isinstance(request_json.get("request"), dict):
            raise VerificationError("request body has no request object")
        if self.settings.skill_id:
            verify_application_id(request_json, self.settings.skill_id)
        return request_json

    # -- request handling ------------------------------------------------------------------

    async def handle_request(
        self, request_json: Mapping[str, Any], on_new_message: OnNewMessage
    ) -> dict[str, Any]:
        """The Alexa response (a JSON-ready dict) for one verified request."""
        kind = request_type(request_json)
        if kind is None:
            raise AlexaRequestError("request has no type")
        sender_id = alexa_user_id(request_json)

        if kind == "SessionEndedRequest":
            request = request_json.get("request") or {}
            logger.debug(
                "Alexa session ended for %s: %s %s",
                sender_id,
                request.get("reason"),
                request.get("error") or "",
            )
            await self._end_rasa_session(request_json, sender_id, on_new_message)
            return build_response(None, end_session=True)

        if kind == "LaunchRequest":
            if self.settings.launch_intent:
                return await self._converse(
                    request_json,
                    sender_id,
                    self.settings.launch_intent,
                    on_new_message,
                    empty_reply=self.settings.launch_message,
                )
            return self._speak(self.settings.launch_message, request_json=request_json)

        if kind != "IntentRequest":
            logger.info("Ignoring an Alexa request of type %s", kind)
            return build_response(None, end_session=False)

        intent = intent_name(request_json)
        if intent is None:
            raise AlexaRequestError("intent request has no intent name")

        if intent in STOP_INTENTS:
            await self._end_rasa_session(request_json, sender_id, on_new_message)
            return self._speak(self.settings.stop_message, end_session=True)

        if intent == HELP_INTENT:
            if self.settings.help_intent:
                return await self._converse(
                    request_json,
                    sender_id,
                    self.settings.help_intent,
                    on_new_message,
                    empty_reply=self.settings.help_message,
                )
            return self._speak(self.settings.help_message, request_json=request_json)

        if intent.startswith(BUILTIN_PREFIX):
            # AMAZON.FallbackIntent (nothing in the interaction model matched), and
            # built-ins such as AMAZON.NavigateHomeIntent that a chat has no use for: let
            # the bot's own fallback answer.
            if self.settings.fallback_intent:
                return await self._converse(
                    request_json, sender_id, self.settings.fallback_intent, on_new_message
                )
            return self._speak(self.settings.fallback_message, request_json=request_json)

        text = user_text(request_json, self.settings.slot_name)
        if text is None:
            return self._speak(self.settings.unclear_message, request_json=request_json)
        payload = match_button(text, _session_attributes(request_json).get(BUTTONS_ATTRIBUTE))
        return await self._converse(request_json, sender_id, payload or text, on_new_message)

    async def _converse(
        self,
        request_json: Mapping[str, Any],
        sender_id: str,
        text: str,
        on_new_message: OnNewMessage,
        *,
        empty_reply: str | None = None,
    ) -> dict[str, Any]:
        """Send ``text`` through the bot and speak its whole reply."""
        messages = await self._run_bot(request_json, sender_id, text, on_new_message)
        if messages is None:  # the late reply may ask something else: forget old buttons
            return self._speak(
                self.settings.timeout_message, request_json=request_json, keep_buttons=False
            )
        if not speech_parts(messages):
            logger.debug("Empty bot reply for %s; speaking the fallback message", sender_id)
            return self._speak(
                empty_reply or self.settings.fallback_message,
                request_json=request_json,
                keep_buttons=False,
            )
        attributes = _session_attributes(request_json)
        attributes.pop(BUTTONS_ATTRIBUTE, None)
        choices = button_choices(messages)
        if choices:
            attributes[BUTTONS_ATTRIBUTE] = choices
        return build_response(
            to_ssml(messages),
            end_session=False,
            reprompt=text_to_ssml(self.settings.reprompt),
            session_attributes=attributes,
        )

    def _speak(
        self,
        text: str,
        *,
        end_session: bool = False,
        request_json: Mapping[str, Any] | None = None,
        keep_buttons: bool = True,
    ) -> dict[str, Any]:
        """A response that says one configured text. The session attributes are kept,
        including the last reply's buttons unless ``keep_buttons`` is false (so after
        "help" or an empty slot, a button title still works)."""
        attributes = _session_attributes(request_json) if request_json is not None else {}
        if not keep_buttons:
            attributes.pop(BUTTONS_ATTRIBUTE, None)
        return build_response(
            text_to_ssml(text),
            end_session=end_session,
            reprompt=text_to_ssml(self.settings.reprompt),
            session_attributes=attributes,
        )

    async def _end_rasa_session(
        self, request_json: Mapping[str, Any], sender_id: str, on_new_message: OnNewMessage
    ) -> None:
        """Tell Rasa the conversation is over (``session_end_intent``); nothing is spoken."""
        if self.settings.session_end_intent:
            await self._run_bot(
                request_json, sender_id, self.settings.session_end_intent, on_new_message
            )

    # -- running the bot -------------------------------------------------------------------

    def metadata(self, request_json: Mapping[str, Any]) -> dict[str, Any]:
        """The ``UserMessage`` metadata for a request (stored with the user's event)."""
        session = request_json.get("session")
        session = session if isinstance(session, Mapping) else {}
        request = request_json.get("request")
        request = request if isinstance(request, Mapping) else {}
        new_session = session.get("new")
        return {
            "alexa": {
                "request_type": request_type(request_json),
                "request_id": request.get("requestId"),
                "session_id": session.get("sessionId"),
                "new_session": new_session if isinstance(new_session, bool) else None,
                "locale": request.get("locale"),
                "intent": intent_name(request_json),
            }
        }

    async def _run_bot(
        self,
        request_json: Mapping[str, Any],
        sender_id: str,
        text: str,
        on_new_message: OnNewMessage,
    ) -> list[dict[str, Any]] | None:
        """Run one turn; the collected bot messages, ``[]`` if Rasa failed, or ``None`` if
        it did not finish within ``reply_timeout`` (it then finishes in the background)."""
        collector = AlexaOutputChannel()
        message = UserMessage(
            text,
            collector,
            sender_id,
            input_channel=self.name(),
            metadata=self.metadata(request_json),
        )
        task = asyncio.ensure_future(self._deliver(on_new_message, message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        try:
            delivered = await asyncio.wait_for(
                asyncio.shield(task), timeout=self.settings.reply_timeout
            )
        except asyncio.TimeoutError:
            logger.warning(
                "The bot did not answer %s within %.1f s; the reply will still be stored "
                "in the tracker",
                sender_id,
                self.settings.reply_timeout,
            )
            task.add_done_callback(_log_late_reply)
            return None
        return collector.messages if delivered else []

    @staticmethod
    async def _deliver(on_new_message: OnNewMessage, message: UserMessage) -> bool:
        try:
            await on_new_message(message)
        except Exception:
            logger.exception(
                "Rasa failed to handle a message from Alexa user %s", message.sender_id
            )
            return False
        return True

    async def wait_for_pending(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) for turns that outlived their reply timeout;
        ``True`` when none is left."""
        pending = set(self._pending)
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        return not any(not task.done() for task in pending)

    @property
    def pending(self) -> int:
        """How many turns are still running after their reply timeout."""
        return sum(1 for task in self._pending if not task.done())


def _session_attributes(request_json: Mapping[str, Any]) -> dict[str, Any]:
    session = request_json.get("session")
    attributes = session.get("attributes") if isinstance(session, Mapping) else None
    return dict(attributes) if isinstance(attributes, Mapping) else {}


def _log_late_reply(task: asyncio.Task) -> None:
    if task.cancelled():
        logger.warning("A late Alexa turn was cancelled before it finished")
    elif task.result():
        logger.info("A late Alexa turn finished; its reply is in the tracker")
