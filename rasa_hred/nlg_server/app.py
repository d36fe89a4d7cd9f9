"""The NLG server's HTTP app: Rasa's NLG endpoint for the HRED's responses and all others.

Rasa calls an NLG server for **every** response once ``endpoints.yml`` names one
(``nlg: url: "http://localhost:5056/nlg"``), and expects a JSON object with any of ``text``,
``buttons``, ``image``, ``elements``, ``attachment``, ``custom``. This app answers:

- the HRED responses (``responses``, default ``utter_hred``) with ``{"text": reply}``, the
  reply the HRED gives for the conversation (``dialogue_context`` of the tracker's events,
  the same rules as ``HREDPolicy``). Generation runs through
  ``ResponseGenerator.agenerate``: concurrent conversations are decoded as one batch in a
  worker thread, so the event loop never waits on a forward pass. If generation fails, the
  domain's fallback response (the policy's ``fallback_response``, or the generator's
  fallback text) is said instead;
- every other response exactly as Rasa's own ``TemplatedNaturalLanguageGenerator`` renders
  it from the domain (slot interpolation, channel-specific and conditional variations,
  buttons, images, custom payloads);
- a response the domain does not know with ``{}``. Rasa's templated NLG returns ``None``
  for it and the action says nothing. Through the callback client ``{}`` is the only
  answer with the same effect (nothing is said, nothing raises): ``null`` or
  ``{"text": null}`` make Rasa raise and lose the action's events. The server logs a
  warning and counts it (``rasa_hred_nlg_requests_total{kind="unknown"}``).

Other endpoints: ``GET /health`` (model, device, vocabulary size, uptime, batching; no
token needed) and ``GET /metrics`` (Prometheus text; behind the token like ``/nlg``).

Authentication: with a ``token`` every request to ``/nlg`` and ``/metrics`` must carry
``?token=T`` (what Rasa's ``EndpointConfig`` sends for ``nlg: token: T``) or
``Authorization: Bearer T``; otherwise 401.

Bad input never gets a 500: see ``protocol`` for the 400s; a header that is not UTF-8 is a
401 (``Authorization``) or a 400; a body over ``max_body_bytes`` gets 413 (and the client
sees it: ``connections``); only the last ``max_events`` events are read; unknown event types
are ignored. Unexpected errors get a 500 JSON answer and are logged. What a client sent is
logged cut short and escaped.

Slow and hostile clients are bounded by ``connections`` and these Sanic settings, all set
here: a request must arrive within ``request_timeout`` of its first byte and be answered
within ``response_timeout``; an idle connection is closed after ``keep_alive_timeout``.
Bodies over ``INLINE_PARSE_BYTES`` are parsed in a worker thread, so that a long tracker
does not stop the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rasa_hred.errors import UserError
from rasa_hred.integration.context import dialogue_context
from rasa_hred.integration.loading import DEFAULT_MAX_HISTORY
from rasa_hred.integration.names import FALLBACK_RESPONSE, RESPONSE
from rasa_hred.nlg_server import defaults
from rasa_hred.nlg_server.metrics import (
    ERROR,
    HRED,
    INVALID,
    TEMPLATE,
    UNAUTHORIZED,
    UNKNOWN,
    ServerMetrics,
)
from rasa_hred.nlg_server.protocol import BadRequest, NLGRequest, conform_message, parse_request

if TYPE_CHECKING:
    from rasa.shared.core.domain import Domain
    from sanic import Sanic

    from rasa_hred.serving.generator import ResponseGenerator

logger = logging.getLogger(__name__)

DEFAULT_RESPONSES = (RESPONSE,)
INLINE_PARSE_BYTES = 1_000_000  # larger bodies are parsed in a worker thread

# Names of TemplatedNaturalLanguageGenerator.generate_from_slots' own parameters: response
# arguments with these names would collide with them and are left out.
_RESERVED_ARGUMENTS = frozenset({"self", "utter_action", "filled_slots", "output_channel"})
_APP_NUMBERS = itertools.count(1)


def _dumps(value: Any) -> str:
    # ASCII JSON: lone surrogates a client sent (e.g. in a slot value) stay valid escapes.
    return json.dumps(value, ensure_ascii=True, allow_nan=False)


def _token_ok(request: Any, token: str | None) -> bool:
    if token is None:
        return True
    expected = token.encode()
    given = request.args.get("token")
    if isinstance(given, str) and hmac.compare_digest(_raw(given), expected):
        return True
    header = request.headers.get("authorization") or ""
    scheme, _, credentials = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(_raw(credentials.strip()), expected)


def _raw(text: str) -> bytes:
    """The bytes a client sent: Sanic decodes header bytes that are not UTF-8 to lone
    surrogates (``surrogateescape``), which plain ``encode()`` refuses."""
    return text.encode("utf-8", "surrogateescape")


def create_app(
    generator: ResponseGenerator,
    domain: Domain | str | Path,
    *,
    token: str | None = None,
    responses: Sequence[str] = DEFAULT_RESPONSES,
    max_history: int | None = DEFAULT_MAX_HISTORY,
    max_body_bytes: int = defaults.MAX_BODY_BYTES,
    max_events: int = defaults.MAX_EVENTS,
    fallback_response: str | None = FALLBACK_RESPONSE,
    model_name: str = "hred",
    shutdown_timeout: float = defaults.SHUTDOWN_TIMEOUT,
    request_timeout: float = defaults.REQUEST_TIMEOUT,
    response_timeout: float = defaults.RESPONSE_TIMEOUT,
    keep_alive_timeout: float = defaults.KEEP_ALIVE_TIMEOUT,
    configure_logging: bool = False,
) -> Sanic:
    """The NLG server as a Sanic app (a new, uniquely named app per call).

    ``generator`` answers the ``responses`` (HRED) names, ``domain`` renders every other
    one. The app does not close the generator. ``app.ctx.metrics`` holds its metrics."""
    from rasa.core.nlg.response import TemplatedNaturalLanguageGenerator
    from rasa.shared.core.domain import Domain
    from sanic.exceptions import SanicException
    from sanic.response import json as json_response
    from sanic.response import raw

    from rasa_hred.nlg_server.connections import AccessLine, GuardedSanic, printable

    if not isinstance(domain, Domain):
        domain = load_domain(domain)
    if max_body_bytes < 1 or max_events < 0:
        raise ValueError("max_body_bytes must be >= 1 and max_events >= 0")
    if min(request_timeout, response_timeout, keep_alive_timeout) <= 0:
        raise ValueError("the timeouts must be > 0")
    if max_history is not None and max_history < 0:
        raise ValueError("max_history must be >= 0 (or None: all turns)")
    hred_responses = frozenset(responses)
    templates = TemplatedNaturalLanguageGenerator(domain.responses)
    if fallback_response is not None and fallback_response not in domain.responses:
        fallback_response = None

    app = GuardedSanic(
        f"rasa_hred_nlg_{next(_APP_NUMBERS)}_{uuid.uuid4().hex[:8]}",
        configure_logging=configure_logging,
    )
    access_log = logging.getLogger("sanic.access")
    if not any(isinstance(f, AccessLine) for f in access_log.filters):
        access_log.addFilter(AccessLine())
    app.config.update(
        {
            "REQUEST_MAX_SIZE": max_body_bytes,
            "REQUEST_TIMEOUT": request_timeout,
            "RESPONSE_TIMEOUT": response_timeout,
            "KEEP_ALIVE_TIMEOUT": keep_alive_timeout,
            "LINGER_SECONDS": defaults.LINGER_SECONDS,
            "LINGER_BYTES": defaults.LINGER_BYTES,
            "GRACEFUL_SHUTDOWN_TIMEOUT": shutdown_timeout,
            "FALLBACK_ERROR_FORMAT": "json",
            "NOISY_EXCEPTIONS": False,
        }
    )
    metrics = ServerMetrics(generator)
    app.ctx.metrics = metrics
    app.ctx.generator = generator
    app.ctx.domain = domain
    started_at = time.monotonic()

    def answer(payload: dict[str, Any], status: int = 200) -> Any:
        return json_response(payload, status=status, dumps=_dumps)

    def fail(request: Any, kind: str, status: int, message: str) -> Any:
        if request is not None and request.path == "/nlg":
            metrics.observe(kind, status, getattr(request.ctx, "started", None))
        return answer({"error": message}, status)

    @app.middleware("request")
    async def _start_clock(request: Any) -> None:
        request.ctx.started = time.perf_counter()

    def render(name: str, request: NLGRequest) -> dict[str, Any] | None:
        arguments = {k: v for k, v in request.arguments.items() if k not in _RESERVED_ARGUMENTS}
        message = templates.generate_from_slots(name, request.slots, request.channel, **arguments)
        return None if message is None else conform_message(message)

    async def hred_reply(nlg: NLGRequest) -> dict[str, Any]:
        context = dialogue_context(nlg.events, max_turns=max_history)
        try:
            reply = await generator.agenerate(context)
            if not isinstance(reply.text, str) or not reply.text.strip():
                raise ValueError("the generator gave an empty reply")
        except Exception:
            logger.exception(
                f"generation failed for '{printable(nlg.response)}'; answering with the fallback"
            )
            metrics.errors.labels("generation").inc()
            metrics.fallbacks.inc()
            message = None
            if fallback_response:
                try:
                    message = render(fallback_response, nlg)
                except Exception:
                    logger.exception(f"cannot render the fallback {fallback_response!r}")
                    metrics.errors.labels("render").inc()
            if message and message.get("text"):
                return message
            return {"text": generator.fallback_reply}
        metrics.replies.inc()
        if reply.fallback:
            metrics.fallbacks.inc()
        return {"text": reply.text}

    @app.post("/nlg")
    async def nlg(request: Any) -> Any:
        if not _token_ok(request, token):
            return fail(request, UNAUTHORIZED, 401, "missing or wrong token")
        try:
            if len(request.body) > INLINE_PARSE_BYTES:
                parsed = await asyncio.to_thread(parse_request, request.body, max_events=max_events)
            else:
                parsed = parse_request(request.body, max_events=max_events)
        except BadRequest as error:
            return fail(request, INVALID, error.status, str(error))
        metrics.active += 1
        try:
            if parsed.response in hred_responses:
                kind, message = HRED, await hred_reply(parsed)
            else:
                try:
                    rendered = render(parsed.response, parsed)
                except Exception:
                    name = printable(parsed.response)
                    logger.exception(f"cannot render the domain response '{name}'")
                    metrics.errors.labels("render").inc()
                    return fail(request, ERROR, 500, f"cannot render '{name}'")
                if rendered is None:
                    logger.warning(
                        f"the domain has no response '{printable(parsed.response)}' (for "
                        f"channel '{printable(str(parsed.channel))}'); answering {{}} so that "
                        "nothing is said"
                    )
                    kind, message = UNKNOWN, {}
                else:
                    kind, message = TEMPLATE, rendered
        finally:
            metrics.active -= 1
        metrics.observe(kind, 200, request.ctx.started)
        return answer(message)

    @app.get("/health")
    async def health(request: Any) -> Any:
        return answer(
            {
                "status": "ok",
                "model": model_name,
                "device": str(generator.device),
                "vocabulary_size": len(generator.vocabulary),
                "uptime_seconds": round(time.monotonic() - started_at, 3),
                "responses": sorted(hred_responses),
                "max_history": max_history,
                "in_flight": metrics.active,
                "batching": {
                    "enabled": generator.batching,
                    "max_batch_size": generator.max_batch_size,
                    "batch_wait_ms": generator.batch_wait_ms,
                    "stats": generator.stats.to_dict(),
                },
                "decoding": generator.decoding.to_dict(),
            }
        )

    @app.get("/metrics")
    async def prometheus(request: Any) -> Any:
        if not _token_ok(request, token):
            return answer({"error": "missing or wrong token"}, 401)
        from prometheus_client import CONTENT_TYPE_LATEST

        return raw(metrics.render(), content_type=CONTENT_TYPE_LATEST)

    @app.exception(Exception)
    async def _on_error(request: Any, exception: Exception) -> Any:
        if isinstance(exception, SanicException):
            status = int(getattr(exception, "status_code", 500) or 500)
            message = str(exception) or type(exception).__name__
            if status >= 500:
                logger.error(f"{type(exception).__name__}: {message}")
            kind = INVALID if status < 500 else ERROR
            return fail(request, kind, status, message)
        if request is None or getattr(request, "route", None) is None:
            # Failed before routing: a malformed HTTP request (e.g. a bad Content-Length).
            if isinstance(exception, UnicodeError):
                return fail(request, INVALID, 400, "malformed HTTP request (not UTF-8)")
            return fail(request, INVALID, 400, f"malformed HTTP request ({exception})")
        logger.error("unexpected error", exc_info=exception)
        metrics.errors.labels("internal").inc()
        return fail(request, ERROR, 500, "internal server error")

    return app


def load_domain(path: str | Path) -> Domain:
    from rasa.shared.core.domain import Domain
    from rasa.shared.exceptions import RasaException

    try:
        return Domain.load(str(path))
    except (RasaException, OSError, ValueError) as error:
        raise UserError(f"cannot load the domain {path}: {error}") from error
