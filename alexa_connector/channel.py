"""Rasa input channel for Amazon Alexa custom skills hosted as a web service.

``credentials.yml`` (every key: :class:`alexa_connector.settings.AlexaSettings`)::

    alexa_connector.AlexaConnector:
      skill_id: "amzn1.ask.skill.00000000-0000-0000-0000-000000000000"

Alexa posts to ``/webhooks/alexa/webhook``; ``GET /webhooks/alexa/`` is a health check.
Every request is verified (certificate chain, signature of the raw body, timestamp, skill
id) before anything else; a request that fails is answered 400 and never reaches Rasa. A body
over :data:`MAX_BODY_BYTES` is answered 413 while it streams in: the route reads the body
itself, so Sanic never buffers more than that (its own limit, ``REQUEST_MAX_SIZE``, is 100 MB
and belongs to the whole ``rasa run`` app). A malformed ``Content-Length`` is answered 400 on
every route of the app (:func:`refuse_malformed_content_length`).

What each kind of request does is decided in :mod:`alexa_connector.turns` (see the table
there and docs/alexa.md for the reasons); this module does the I/O around it. All bot
messages of one turn are spoken, in order. An empty bot reply (or a failure inside Rasa) is
answered with ``fallback_message``. The bot gets ``reply_timeout`` seconds (default 6, Alexa
waits 8): after that the user hears ``timeout_message`` while Rasa finishes the turn in the
background, so the late reply still lands in the tracker.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from rasa.core.channels.channel import CollectingOutputChannel, InputChannel, UserMessage
from sanic import Blueprint, response
from sanic.exceptions import InvalidUsage, PayloadTooLarge
from sanic.request import Request
from sanic.response import HTTPResponse

from alexa_connector.envelope import (
    AlexaRequestError,
    alexa_user_id,
    build_response,
    intent_name,
    message_metadata,
    value_at,
)
from alexa_connector.settings import AlexaConfigurationError, AlexaSettings
from alexa_connector.turns import (
    Converse,
    Ignore,
    bot_reply,
    failure_reply,
    plan_turn,
    say_reply,
)
from alexa_connector.verification import (
    RequestVerifier,
    VerificationError,
    parse_request_body,
    verify_application_id,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_BODY_BYTES",
    "AlexaConnector",
    "AlexaOutputChannel",
    "BodyRefused",
    "declared_length",
    "read_body",
    "refuse_malformed_content_length",
]

#: Requests with a larger body are refused (413) before it is read in full (Alexa's requests
#: are a few KB).
MAX_BODY_BYTES = 256 * 1024
#: On server stop, turns that outlived their reply timeout get this long to finish.
SHUTDOWN_GRACE_S = 10.0

OnNewMessage = Callable[[UserMessage], Awaitable[Any]]


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


class AlexaConnector(InputChannel):
    """Alexa custom-skill requests in, spoken replies out; one Rasa tracker per Alexa user.

    ``AlexaConnector(skill_id, **settings)`` takes the same keys as ``credentials.yml``
    (see :class:`~alexa_connector.settings.AlexaSettings`).
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
            settings.validate()
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

        alexa_webhook.signal("http.lifecycle.request")(refuse_malformed_content_length)

        @alexa_webhook.route("/", methods=["GET"])
        async def health(request: Request) -> HTTPResponse:
            return response.json({"status": "ok"})

        # stream=True: Sanic hands over the body unread, so read_body can stop at the limit.
        @alexa_webhook.route("/webhook", methods=["POST"], stream=True)
        async def receive(request: Request) -> HTTPResponse:
            try:
                body = await read_body(request, MAX_BODY_BYTES)
            except BodyRefused as exc:
                return _refused(exc)
            return await self.handle_http(request.headers, body, on_new_message)

        @alexa_webhook.listener("before_server_stop")
        async def finish_pending(app: Any, loop: Any) -> None:
            if not await self.wait_for_pending(SHUTDOWN_GRACE_S):
                logger.warning("Stopping with %d Alexa turn(s) still running", self.pending)

        return alexa_webhook

    async def handle_http(
        self, headers: Mapping[str, str], body: bytes | None, on_new_message: OnNewMessage
    ) -> HTTPResponse:
        """Verify one raw request and answer it (400 for anything that fails verification
        or is malformed, 413 for a body over the limit, 503 while every certificate download
        slot is busy; never 500)."""
        body = body or b""
        if len(body) > MAX_BODY_BYTES:
            return _refused(_too_large(MAX_BODY_BYTES))
        try:
            request_json = await self._verified_json(headers, body)
            alexa_user_id(request_json)  # fail early (400) when there is nobody to talk to
        except VerificationError as exc:
            logger.warning("Rejected an Alexa request: %s", exc.reason)
            return response.json({"error": exc.reason}, status=exc.status)
        except AlexaRequestError as exc:
            logger.warning("Rejected an Alexa request: %s", exc)
            return response.json({"error": str(exc)}, status=400)

        try:
            reply = await self.handle_request(request_json, on_new_message)
        except AlexaRequestError as exc:
            logger.warning("Rejected an Alexa request: %s", exc)
            return response.json({"error": str(exc)}, status=400)
        except Exception:
            logger.exception("Failed to answer an Alexa request")
            reply = failure_reply(self.settings)
        return response.json(reply)

    async def _verified_json(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        if self.verifier is not None:
            return await self.verifier.verify(headers, body)
        # Verification disabled (local development): still refuse what is not a request.
        request_json = parse_request_body(body)
        if self.settings.skill_id:
            verify_application_id(request_json, self.settings.skill_id)
        return request_json

    # -- one turn --------------------------------------------------------------------------

    async def handle_request(
        self, request_json: Mapping[str, Any], on_new_message: OnNewMessage
    ) -> dict[str, Any]:
        """The Alexa response (a JSON-ready dict) for one verified request."""
        turn = plan_turn(request_json, self.settings)
        if isinstance(turn, Ignore):
            logger.info("Ignoring an Alexa request of type %s", turn.request_type)
            return build_response(None, end_session=False)
        sender_id = alexa_user_id(request_json)
        if isinstance(turn, Converse):
            messages = await self._run_bot(request_json, sender_id, turn.message, on_new_message)
            return bot_reply(turn, messages, request_json, self.settings)
        if turn.end_session:
            logger.debug(
                "The Alexa session of %s ends: %s %s",
                sender_id,
                value_at(request_json, "request", "reason") or intent_name(request_json),
                value_at(request_json, "request", "error") or "",
            )
            if self.settings.session_end_intent:  # tell Rasa; nothing of its reply is spoken
                await self._run_bot(
                    request_json, sender_id, self.settings.session_end_intent, on_new_message
                )
        return say_reply(turn, request_json, self.settings)

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
            metadata=message_metadata(request_json),
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

    # -- shutdown --------------------------------------------------------------------------

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


class BodyRefused(Exception):
    """A request body refused before it was read in full; ``status`` is 413 (too large) or
    400 (malformed framing)."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _too_large(limit: int) -> BodyRefused:
    return BodyRefused(f"request body is too large (more than {limit} bytes)", 413)


async def read_body(request: Request, limit: int) -> bytes:
    """The body of a ``stream=True`` route's request, refused (:class:`BodyRefused`) as soon
    as it is known to exceed ``limit`` bytes: from ``Content-Length`` before any of it is
    read, else by counting the chunks as they arrive.

    ``Content-Length`` must be valid (:func:`declared_length`; the blueprint also refuses a
    malformed one app-wide, before routing: :func:`refuse_malformed_content_length`).

    In Sanic 21.12, ``request.stream`` is the connection's ``sanic.http.Http``. Its
    ``request_max_size`` (lifted to infinity for streaming routes) is set to ``limit`` too, so
    Sanic refuses an oversized chunk before reading it. On refusal the rest of the body is
    left unread (``request_body``: Sanic would otherwise read and discard up to 100 MB of it)
    and the connection is closed, without the "100 Continue" Sanic would put before the answer
    of an ``Expect: 100-continue`` request. Attributes a future Sanic lacks are skipped; the
    limit itself is counted here.
    """
    stream = request.stream
    if stream is None:  # the body was read already (e.g. a non-streaming route)
        body = request.body or b""
        if len(body) > limit:
            raise _too_large(limit)
        return body
    if hasattr(stream, "request_max_size"):
        stream.request_max_size = limit
    try:
        if (declared_length(request.headers) or 0) > limit:
            raise _too_large(limit)
        received = bytearray()
        while (chunk := await stream.read()) is not None:
            if not chunk:  # a reader that makes no progress: stop rather than spin
                raise BodyRefused("malformed request body", 400)
            received += chunk
            if len(received) > limit:
                raise _too_large(limit)
        return bytes(received)
    except PayloadTooLarge:
        _stop_reading(stream)
        raise _too_large(limit) from None
    except BodyRefused:
        _stop_reading(stream)
        raise


def declared_length(headers: Any) -> int | None:
    """The ``Content-Length`` of a request (``None`` when absent), or :class:`BodyRefused`
    (400) unless every value is plain digits (RFC 9110: ``1*DIGIT``) and they agree.

    Sanic 21.12 reads the header with ``int()`` before routing: ``0x10`` then becomes a 500,
    and a negative length makes its body reader return empty chunks forever without
    yielding, so a single ``Content-Length: -5`` request freezes the whole server.
    """
    values = {value.strip() for value in headers.getall("content-length", [])}
    if any(not (value.isascii() and value.isdigit()) for value in values):
        raise BodyRefused("malformed Content-Length header", 400)
    lengths = {int(value) for value in values}
    if len(lengths) > 1:
        raise BodyRefused("conflicting Content-Length headers", 400)
    return lengths.pop() if lengths else None


async def refuse_malformed_content_length(request: Request) -> None:
    """Sanic's ``http.lifecycle.request`` signal: refuse (400) a malformed ``Content-Length``
    before Sanic parses it (see :func:`declared_length`).

    A signal is app-wide, so this guards every route of the ``rasa run`` server the channel
    is mounted in (the REST channel's too), not only the Alexa webhook: one such request
    would otherwise freeze them all.
    """
    try:
        declared_length(request.headers)
    except BodyRefused as exc:
        raise InvalidUsage(exc.reason) from None


def _stop_reading(stream: Any) -> None:
    for flag, value in (
        ("request_body", None),
        ("keep_alive", False),
        ("expecting_continue", False),
    ):
        if hasattr(stream, flag):
            setattr(stream, flag, value)


def _refused(exc: BodyRefused) -> HTTPResponse:
    logger.warning("Rejected an Alexa request: %s", exc.reason)
    return response.json({"error": exc.reason}, status=exc.status)


def _log_late_reply(task: asyncio.Task) -> None:
    if task.cancelled():
        logger.warning("A late Alexa turn was cancelled before it finished")
    elif task.result():
        logger.info("A late Alexa turn finished; its reply is in the tracker")
