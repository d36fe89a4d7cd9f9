"""``rasa-hred serve``: an NLG server for Rasa that generates HRED replies and renders the rest.

Rasa calls an NLG server for **every** response once ``endpoints.yml`` names one::

    nlg:
      url: "http://localhost:5056/nlg"

It POSTs ``{"response": "utter_x", "id": .., "arguments": {..}, "tracker": {.. "events":
[..], "slots": {..}}, "channel": {"name": "rest"}}`` and expects a JSON object with any of
``text``, ``buttons``, ``image``, ``elements``, ``attachment``, ``custom``. This server answers:

- the HRED responses (``--responses``, default ``utter_hred``) with ``{"text": reply}``, the
  reply the HRED gives for the conversation (``dialogue_context`` of the tracker's events,
  the same rules as ``HREDPolicy``). Generation runs through
  ``ResponseGenerator.agenerate``: concurrent conversations are decoded as one batch in a
  worker thread, so the event loop never waits on a forward pass. If generation fails, the
  domain's ``utter_hred_fallback`` (or the generator's fallback text) is said instead;
- every other response exactly as Rasa's own ``TemplatedNaturalLanguageGenerator`` renders
  it from the domain (slot interpolation, channel-specific and conditional variations,
  buttons, images, custom payloads);
- a response the domain does not know with ``{}``. Rasa's templated NLG returns ``None``
  for it and the action says nothing. Through the callback client ``{}`` is the only
  answer with the same effect (nothing is said, nothing raises): ``null`` or
  ``{"text": null}`` make Rasa raise and lose the action's events. The server logs a
  warning and counts it (``rasa_hred_nlg_requests_total{kind="unknown"}``).

Using it with the demo assistant (its ``config.yml`` keeps ``generate: in_process``):

1. set ``generate: nlg_server`` on ``rasa_hred.HREDPolicy`` in ``config.yml`` and
   ``rasa train`` (the policy then only predicts ``utter_hred``; ``make run-nlg`` trains
   such a variant from the demo archive's HRED without retraining it);
2. ``rasa-hred serve --model models/<archive>.tar.gz`` (or ``--model DIR --domain
   domain.yml``); from an archive the HRED, the domain and the policy's ``max_history``,
   ``decoding`` and ``response`` are taken from the archive, so replies are those the
   policy would generate in-process;
3. ``rasa run --endpoints endpoints-nlg.yml``.

Other endpoints: ``GET /health`` (model, device, vocabulary size, uptime, batching; no
token needed) and ``GET /metrics`` (Prometheus text; behind the token like ``/nlg``).

Authentication: with ``--token T`` every request to ``/nlg`` and ``/metrics`` must carry
``?token=T`` (what Rasa's ``EndpointConfig`` sends for ``nlg: token: T``) or
``Authorization: Bearer T``; otherwise 401.

Bad input never gets a 500: invalid JSON, a body that is not an object, a missing or
wrong-typed ``response``/``tracker``/``events``/``slots``/``channel``/``arguments`` get a
400 ``{"error": ...}``; a body over ``--max-body-bytes`` gets 413; only the last
``--max-events`` events are read; unknown event types are ignored. A missing ``channel``,
``arguments`` or ``slots`` means none (Rasa always sends them). Unexpected errors get a 500
JSON answer and are logged.

Shutdown: on SIGTERM/SIGINT the server stops accepting connections, lets in-flight requests
finish (up to ``--shutdown-timeout`` seconds, Sanic's graceful shutdown), then exits 0.
"""

from __future__ import annotations

import argparse
import hmac
import itertools
import json
import logging
import math
import os
import shutil
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from rasa_hred.errors import UserError
from rasa_hred.integration.context import dialogue_context

if TYPE_CHECKING:
    from rasa.shared.core.domain import Domain
    from sanic import Sanic

    from rasa_hred.serving.generator import ResponseGenerator

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5056
DEFAULT_RESPONSES = ("utter_hred",)
DEFAULT_FALLBACK_RESPONSE = "utter_hred_fallback"
DEFAULT_MAX_HISTORY = 10  # HREDPolicy's default
DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_MAX_EVENTS = 10_000
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
HRED_POLICY_SUFFIX = "HREDPolicy"
MODEL_FILES = ("config.json", "vocab.json", "model.safetensors")

# Request kinds in the metrics.
HRED, TEMPLATE, UNKNOWN, INVALID, UNAUTHORIZED, ERROR = (
    "hred",
    "template",
    "unknown",
    "invalid",
    "unauthorized",
    "error",
)
# Names of TemplatedNaturalLanguageGenerator.generate_from_slots' own parameters: response
# arguments with these names would collide with them and are left out.
_RESERVED_ARGUMENTS = frozenset({"self", "utter_action", "filled_slots", "output_channel"})
_APP_NUMBERS = itertools.count(1)


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
    """Validate an NLG request body; ``BadRequest`` says what is wrong with it."""
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


# --- metrics ------------------------------------------------------------------------------


class _BatchCollector:
    """Exposes the generator's micro-batching statistics at scrape time."""

    BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

    def __init__(self, generator: ResponseGenerator) -> None:
        self.generator = generator

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        stats = self.generator.stats
        sizes = dict(stats.sizes)
        buckets = []
        for bound in self.BUCKETS:
            buckets.append((str(float(bound)), sum(n for s, n in sizes.items() if s <= bound)))
        buckets.append(("+Inf", sum(sizes.values())))
        yield HistogramMetricFamily(
            "rasa_hred_nlg_batch_size",
            "Contexts per decoded batch (the generator's micro-batcher)",
            buckets=buckets,
            sum_value=float(sum(s * n for s, n in sizes.items())),
        )
        yield GaugeMetricFamily(
            "rasa_hred_nlg_largest_batch", "Largest batch decoded so far", value=stats.largest_batch
        )
        yield CounterMetricFamily(
            "rasa_hred_nlg_generator_busy_seconds",
            "Seconds the generator's worker spent decoding",
            value=stats.busy_seconds,
        )


@dataclass
class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own (one per app)."""

    generator: ResponseGenerator
    registry: Any = field(init=False)

    def __post_init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "rasa_hred_nlg_requests",
            "NLG requests answered, by response kind (hred, template, unknown, invalid, "
            "unauthorized, error) and HTTP status",
            ["kind", "status"],
            registry=registry,
        )
        self.errors = Counter(
            "rasa_hred_nlg_errors",
            "Failures: generation (answered with the fallback), render, internal",
            ["type"],
            registry=registry,
        )
        self.latency = Histogram(
            "rasa_hred_nlg_request_seconds",
            "Time to answer an NLG request, by response kind",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=registry,
        )
        self.replies = Counter(
            "rasa_hred_nlg_generated_replies", "HRED replies generated", registry=registry
        )
        self.fallbacks = Counter(
            "rasa_hred_nlg_fallback_replies",
            "HRED requests answered with the fallback (generation failed or was empty)",
            registry=registry,
        )
        self.active = 0
        self.in_flight = Gauge(
            "rasa_hred_nlg_in_flight", "NLG requests being answered now", registry=registry
        )
        self.in_flight.set_function(lambda: self.active)
        registry.register(_BatchCollector(self.generator))

    def observe(self, kind: str, status: int, started: float | None) -> None:
        self.requests.labels(kind, str(status)).inc()
        if started is not None:
            self.latency.labels(kind).observe(time.perf_counter() - started)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# --- the app ------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    # ASCII JSON: lone surrogates a client sent (e.g. in a slot value) stay valid escapes.
    return json.dumps(value, ensure_ascii=True, allow_nan=False)


def _token_ok(request: Any, token: str | None) -> bool:
    if token is None:
        return True
    expected = token.encode()
    given = request.args.get("token")
    if isinstance(given, str) and hmac.compare_digest(given.encode(), expected):
        return True
    header = request.headers.get("authorization") or ""
    scheme, _, credentials = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode(), expected
    )


def create_app(
    generator: ResponseGenerator,
    domain: Domain | str | Path,
    *,
    token: str | None = None,
    responses: Sequence[str] = DEFAULT_RESPONSES,
    max_history: int | None = DEFAULT_MAX_HISTORY,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_events: int = DEFAULT_MAX_EVENTS,
    fallback_response: str | None = DEFAULT_FALLBACK_RESPONSE,
    model_name: str = "hred",
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    configure_logging: bool = False,
) -> Sanic:
    """The NLG server as a Sanic app (a new, uniquely named app per call).

    ``generator`` answers the ``responses`` (HRED) names, ``domain`` renders every other
    one. The app does not close the generator. ``app.ctx.metrics`` holds its metrics."""
    from rasa.core.nlg.response import TemplatedNaturalLanguageGenerator
    from rasa.shared.core.domain import Domain
    from sanic import Sanic
    from sanic.exceptions import SanicException
    from sanic.response import json as json_response
    from sanic.response import raw

    if not isinstance(domain, Domain):
        domain = load_domain(domain)
    if max_body_bytes < 1 or max_events < 0:
        raise ValueError("max_body_bytes must be >= 1 and max_events >= 0")
    if max_history is not None and max_history < 0:
        raise ValueError("max_history must be >= 0 (or None: all turns)")
    hred_responses = frozenset(responses)
    templates = TemplatedNaturalLanguageGenerator(domain.responses)
    if fallback_response is not None and fallback_response not in domain.responses:
        fallback_response = None

    app = Sanic(
        f"rasa_hred_nlg_{next(_APP_NUMBERS)}_{uuid.uuid4().hex[:8]}",
        configure_logging=configure_logging,
    )
    app.config.REQUEST_MAX_SIZE = max_body_bytes
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = shutdown_timeout
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.NOISY_EXCEPTIONS = False
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
            logger.exception(f"generation failed for {nlg.response!r}; answering with the fallback")
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
                    logger.exception(f"cannot render the domain response {parsed.response!r}")
                    metrics.errors.labels("render").inc()
                    return fail(request, ERROR, 500, f"cannot render {parsed.response!r}")
                if rendered is None:
                    logger.warning(
                        f"the domain has no response {parsed.response!r} (for channel "
                        f"{parsed.channel!r}); answering {{}} so that nothing is said"
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


# --- Rasa model archives ------------------------------------------------------------------


@dataclass
class ArchiveModel:
    """What ``extract_policy_model`` took from a Rasa model archive."""

    directory: Path  # config.json, vocab.json, model.safetensors
    policy_config: dict[str, Any]  # the HREDPolicy's config as trained (may be {})
    resource: str  # the policy's folder under components/
    domain_file: Path | None  # the archive's domain.yml, extracted next to the model


def _safe_name(name: str) -> str | None:
    """The member's path if it is a plain relative path, ``None`` for the archive root."""
    if name in ("", ".", "./", "/"):
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name:
        raise UserError(f"the archive has an unsafe member {name!r}; refusing to read it")
    parts = [p for p in path.parts if p != "."]
    return "/".join(parts) or None


def extract_policy_model(archive: str | Path, target: str | Path) -> ArchiveModel:
    """Extract the HREDPolicy's model directory (and the domain) from a Rasa model archive.

    Only the needed regular files are copied, by reading them from the archive and writing
    them under ``target`` with names of our own; an archive with an absolute or ``..``
    member is refused, and a needed file that is a link or a device is an error. The policy
    is found through ``metadata.json`` (the node that uses ``...HREDPolicy``), else as the
    one ``components/`` folder holding the three model files."""
    archive, target = Path(archive), Path(target)
    with _open_archive(archive) as tar:
        try:
            members: dict[str, tarfile.TarInfo] = {}
            for member in tar.getmembers():
                name = _safe_name(member.name)
                if name is not None:
                    members[name] = member
        except (tarfile.TarError, OSError, EOFError) as error:
            raise UserError(f"{archive}: damaged archive ({error})") from error

        def read(name: str, limit: int = 64 << 20) -> bytes:
            member = members[name]
            if not member.isfile():
                raise UserError(f"{archive}: {name} is not a regular file")
            if member.size > limit:
                raise UserError(f"{archive}: {name} is too large ({member.size} bytes)")
            handle = tar.extractfile(member)
            assert handle is not None
            return handle.read()

        metadata: dict[str, Any] = {}
        if "metadata.json" in members:
            try:
                metadata = json.loads(read("metadata.json"))
            except ValueError as error:
                raise UserError(f"{archive}: metadata.json is not JSON ({error})") from error
        nodes = _policy_nodes(metadata)
        if not nodes:  # no metadata: look for the model files themselves
            folders = {
                name.split("/")[1]
                for name in members
                if name.startswith("components/") and name.count("/") == 2
            }
            nodes = [
                (folder, {})
                for folder in sorted(folders)
                if all(f"components/{folder}/{file}" in members for file in MODEL_FILES)
            ]
        resources = sorted({resource for resource, _ in nodes})
        if not resources:
            raise UserError(f"{archive}: no rasa_hred.HREDPolicy model inside")
        if len(resources) > 1:
            raise UserError(
                f"{archive}: several HRED policies ({', '.join(resources)}); "
                "extract one and pass its directory"
            )
        resource = resources[0]
        config = next(config for r, config in nodes if r == resource)
        directory = target / "model"
        directory.mkdir(parents=True, exist_ok=True)
        for file in MODEL_FILES:
            name = f"components/{resource}/{file}"
            if name not in members:
                raise UserError(f"{archive}: the policy's folder lacks {file}")
            member = members[name]
            if not member.isfile():
                raise UserError(f"{archive}: {name} is not a regular file")
            source = tar.extractfile(member)
            assert source is not None
            with source, (directory / file).open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
        domain_file = None
        if "components/domain_provider/domain.yml" in members:
            domain_file = target / "domain.yml"
            domain_file.write_bytes(read("components/domain_provider/domain.yml"))
        elif isinstance(metadata.get("domain"), dict):
            import yaml

            domain_file = target / "domain.yml"
            domain_file.write_text(yaml.safe_dump(metadata["domain"]), encoding="utf-8")
    return ArchiveModel(directory, dict(config), resource, domain_file)


def _open_archive(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as error:
        raise UserError(f"{archive}: not a readable Rasa model archive ({error})") from error


def _policy_nodes(metadata: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(resource name, config) of every HREDPolicy node in the archive's predict schema."""
    schema = metadata.get("predict_schema")
    nodes = schema.get("nodes") if isinstance(schema, Mapping) else None
    found = []
    for node in (nodes or {}).values():
        if not isinstance(node, Mapping):
            continue
        uses = str(node.get("uses") or "")
        resource = node.get("resource")
        if not uses.endswith(HRED_POLICY_SUFFIX) or not isinstance(resource, Mapping):
            continue
        name = resource.get("name")
        config = node.get("config")
        if isinstance(name, str) and "/" not in name and name not in ("", ".", ".."):
            found.append((name, dict(config) if isinstance(config, Mapping) else {}))
    return found


def is_archive(path: str | Path) -> bool:
    return Path(path).is_file() and tarfile.is_tarfile(str(path))


# --- the commands ---------------------------------------------------------------------------


@dataclass
class ServeSettings:
    """Everything ``serve_command`` resolved from the flags (and the archive)."""

    model_dir: Path
    domain: Path
    model_name: str
    responses: list[str]
    max_history: int | None
    decoding: Any  # DecodingConfig or None (the model's defaults)
    policy_config: dict[str, Any] = field(default_factory=dict)


def resolve_settings(args: argparse.Namespace, scratch: Path) -> ServeSettings:
    """Model directory, domain, responses, history and decoding for ``serve``: the flags,
    then (for an archive) the HREDPolicy's config in it, then the defaults."""
    from rasa_hred.core.decoding import DecodingConfig, DecodingError

    model = Path(args.model)
    policy_config: dict[str, Any] = {}
    domain = Path(args.domain) if args.domain else None
    if model.is_dir():
        model_dir = model
    elif is_archive(model):
        extracted = extract_policy_model(model, scratch)
        model_dir, policy_config = extracted.directory, extracted.policy_config
        if domain is None:
            domain = extracted.domain_file
        generate = policy_config.get("generate", "in_process")
        if generate != "nlg_server":
            logger.warning(
                f"{model}: the HREDPolicy generates in-process (generate: {generate}); "
                "it then generates each reply itself and this server's text replaces it. "
                "Train with `generate: nlg_server` to generate only here."
            )
    elif model.exists():
        raise UserError(f"--model {model}: neither a model directory nor a Rasa model archive")
    else:
        raise UserError(f"--model {model}: no such file or directory")
    if domain is None:
        raise UserError("--domain is required with a model directory (e.g. --domain domain.yml)")
    responses = args.responses or [policy_config.get("response") or DEFAULT_RESPONSES[0]]
    max_history = args.max_history
    if max_history is None:
        max_history = int(policy_config.get("max_history") or DEFAULT_MAX_HISTORY)
    decoding = None
    stored = policy_config.get("decoding")
    try:
        if stored:
            decoding = DecodingConfig.from_dict(stored)
    except (DecodingError, TypeError, ValueError) as error:
        raise UserError(f"{model}: the policy's decoding config: {error}") from error
    name = model.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return ServeSettings(
        model_dir, domain, name, list(responses), max_history, decoding, policy_config
    )


def decoding_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding flags given (as ``respond``), then ``--decoding JSON`` on top."""
    from rasa_hred.cli.generate import decoding_overrides

    overrides = decoding_overrides(args)
    if getattr(args, "decoding", None):
        try:
            extra = json.loads(args.decoding)
        except ValueError as error:
            raise UserError(f"--decoding is not JSON: {error}") from None
        if not isinstance(extra, dict):
            raise UserError("--decoding must be a JSON object of decoding options")
        overrides |= extra
    return overrides


def build_generator(args: argparse.Namespace, settings: ServeSettings) -> ResponseGenerator:
    from rasa_hred.core.decoding import DecodingError
    from rasa_hred.serving.generator import ResponseGenerator

    if args.max_batch_size < 1 or args.batch_wait_ms < 0:
        raise UserError("--max-batch-size must be >= 1 and --batch-wait-ms >= 0")
    generator = ResponseGenerator.load(
        settings.model_dir,
        device=args.device,
        decoding=settings.decoding,
        # As HREDPolicy loads its generator: the context holds max_history turns.
        max_turns=settings.max_history,
        batching=args.batching,
        batch_wait_ms=args.batch_wait_ms,
        max_batch_size=args.max_batch_size,
    )
    overrides = decoding_flags(args)
    if overrides:
        try:
            generator.decoding = generator.decoding.replace(**overrides)
        except (DecodingError, TypeError, ValueError) as error:
            generator.close()
            raise UserError(f"decoding options: {error}") from error
    return generator


def serve_command(args: argparse.Namespace) -> int:
    """``rasa-hred serve``: load the model, then serve until SIGTERM/SIGINT (exit 0)."""
    if args.max_body_bytes < 1 or args.max_events < 0:
        raise UserError("--max-body-bytes must be >= 1 and --max-events >= 0")
    if args.max_history is not None and args.max_history < 1:
        raise UserError("--max-history must be >= 1")
    if not math.isfinite(args.shutdown_timeout) or args.shutdown_timeout < 0:
        raise UserError("--shutdown-timeout must be >= 0")
    token = args.token if args.token is not None else os.environ.get("RASA_HRED_NLG_TOKEN")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="rasa-hred-serve-") as scratch:
        settings = resolve_settings(args, Path(scratch))
        domain = load_domain(settings.domain)
        generator = build_generator(args, settings)
        try:
            app = create_app(
                generator,
                domain,
                token=token or None,
                responses=settings.responses,
                max_history=settings.max_history,
                max_body_bytes=args.max_body_bytes,
                max_events=args.max_events,
                model_name=settings.model_name,
                shutdown_timeout=args.shutdown_timeout,
            )
            logger.info(
                f"serving {settings.model_name} on http://{args.host}:{args.port}/nlg "
                f"(device {generator.device}, responses {', '.join(settings.responses)}, "
                f"max_history {settings.max_history}, batching "
                f"{'on' if generator.batching else 'off'}, token "
                f"{'required' if token else 'off'})"
            )
            sys.stdout.flush()
            app.run(
                host=args.host,
                port=args.port,
                workers=1,
                access_log=args.access_log,
                motd=False,
                register_sys_signals=True,
            )
        finally:
            generator.close()
    logger.info("stopped")
    return 0


def nlg_config_command(args: argparse.Namespace) -> int:
    """``rasa-hred nlg-config``: a Rasa config that generates in the NLG server, using the
    HRED already trained into a model archive (so ``rasa train`` need not retrain it)."""
    import yaml

    out = Path(args.out)
    extracted_dir = out / "hred"
    with tempfile.TemporaryDirectory(prefix="rasa-hred-nlg-config-") as scratch:
        extracted = extract_policy_model(args.archive, scratch)
        if extracted_dir.exists():
            shutil.rmtree(extracted_dir)
        extracted_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(extracted.directory, extracted_dir)
    try:
        config = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"cannot read {args.config}: {error}") from error
    policies = config.get("policies") if isinstance(config, dict) else None
    hred = [
        p
        for p in policies or []
        if isinstance(p, dict) and str(p.get("name", "")).endswith(HRED_POLICY_SUFFIX)
    ]
    if not hred:
        raise UserError(f"{args.config}: no rasa_hred.HREDPolicy among the policies")
    for policy in hred:
        policy["generate"] = "nlg_server"
        policy["model"] = str(extracted_dir)
    header = (
        f"# Generated by `rasa-hred nlg-config` from {args.config} and {args.archive}:\n"
        "# the HREDPolicy predicts utter_hred and `rasa-hred serve` generates the text\n"
        "# (generate: nlg_server), with the HRED the archive was trained with.\n"
    )
    (out / "config.yml").write_text(
        header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8"
    )
    print(out / "config.yml")
    return 0
