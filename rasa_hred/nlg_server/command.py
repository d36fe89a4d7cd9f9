"""``rasa-hred serve`` and ``rasa-hred nlg-config`` as library functions, on typed settings.

Using the server with the demo assistant (its ``config.yml`` has ``generate: in_nlg``):

1. set ``generate: nlg_server`` on ``rasa_hred.HREDPolicy`` in ``config.yml`` and
   ``rasa train`` (the policy then only predicts ``utter_hred``; ``make run-nlg`` trains
   such a variant from the demo archive's HRED without retraining it, through
   :func:`write_nlg_config`);
2. ``rasa-hred serve --model models/<archive>.tar.gz`` (or ``--model DIR --domain
   domain.yml``); from an archive the HRED, the domain and the policy's ``max_history``,
   ``decoding``, ``response`` and ``fallback_response`` are taken from the archive, and the
   generator is loaded as the policy loads it (``integration.loading``), so replies are
   those the policy would generate in-process;
3. ``rasa run --endpoints endpoints-nlg.yml``.

Shutdown: on SIGTERM/SIGINT the server stops accepting connections, lets in-flight requests
finish (up to ``shutdown_timeout`` seconds, Sanic's graceful shutdown), then exits 0.

The error messages name the command's flags: these functions are what the flags set.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rasa_hred.errors import UserError
from rasa_hred.integration.archive import extract_policy_model, is_archive
from rasa_hred.integration.derive import derive_config
from rasa_hred.integration.loading import (
    DEFAULT_MAX_HISTORY,
    HREDPolicyError,
    load_policy_generator,
    with_defaults,
)
from rasa_hred.nlg_server import defaults
from rasa_hred.nlg_server.app import create_app, load_domain

if TYPE_CHECKING:
    from rasa_hred.serving.generator import ResponseGenerator

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True)
class ServeOptions:
    """What ``rasa-hred serve`` is asked to do. ``None`` means: from the archive's policy
    (``responses``, ``max_history``, ``domain``), else the defaults."""

    model: Path  # a model directory or a Rasa model archive
    domain: Path | None = None  # required with a model directory
    host: str = defaults.HOST
    port: int = defaults.PORT
    token: str | None = None  # required on /nlg and /metrics when set
    responses: Sequence[str] | None = None
    max_history: int | None = None
    device: str = "auto"
    dtype: str | None = None  # None: the archive's policy's (auto by default)
    batching: bool = True
    max_batch_size: int = defaults.MAX_BATCH_SIZE
    batch_wait_ms: float = defaults.BATCH_WAIT_MS
    max_body_bytes: int = defaults.MAX_BODY_BYTES
    max_events: int = defaults.MAX_EVENTS
    shutdown_timeout: float = defaults.SHUTDOWN_TIMEOUT
    threads: int | None = None  # PyTorch's CPU threads (None: its default; serving.threads)
    access_log: bool = False
    decoding: Mapping[str, Any] = field(default_factory=dict)  # over the policy's decoding

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_events < 0:
            raise UserError("--max-body-bytes must be >= 1 and --max-events >= 0")
        if self.max_history is not None and self.max_history < 1:
            raise UserError("--max-history must be >= 1")
        if not math.isfinite(self.shutdown_timeout) or self.shutdown_timeout < 0:
            raise UserError("--shutdown-timeout must be >= 0")
        if self.max_batch_size < 1 or self.batch_wait_ms < 0:
            raise UserError("--max-batch-size must be >= 1 and --batch-wait-ms >= 0")


@dataclass
class ServeSettings:
    """What the server runs with: the options resolved against the archive's policy."""

    model_dir: Path
    domain: Path
    model_name: str
    responses: list[str]
    max_history: int
    fallback_response: str
    policy_config: dict[str, Any] = field(default_factory=dict)  # as stored in the archive


def resolve_settings(options: ServeOptions, scratch: Path) -> ServeSettings:
    """Model directory, domain, responses and history for the server: the options, then (for
    an archive, extracted into ``scratch``) the HREDPolicy's config in it, then the
    policy's defaults."""
    model = Path(options.model)
    policy_config: dict[str, Any] = {}
    domain = options.domain
    if model.is_dir():
        model_dir = model
    elif is_archive(model):
        extracted = extract_policy_model(model, scratch)
        model_dir, policy_config = extracted.directory, extracted.policy_config
        if domain is None:
            domain = extracted.domain_file
        generate = with_defaults(policy_config)["generate"]
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
    policy = with_defaults(policy_config)
    max_history = options.max_history
    if max_history is None:
        max_history = int(policy["max_history"] or DEFAULT_MAX_HISTORY)
    return ServeSettings(
        model_dir=model_dir,
        domain=Path(domain),
        model_name=_model_name(model),
        responses=list(options.responses or [policy["response"]]),
        max_history=max_history,
        fallback_response=policy["fallback_response"],
        policy_config=policy_config,
    )


def _model_name(model: Path) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if model.name.endswith(suffix):
            return model.name[: -len(suffix)]
    return model.name


def build_generator(options: ServeOptions, settings: ServeSettings) -> ResponseGenerator:
    """The policy's generator (as ``HREDPolicy.load`` builds it, with the resolved
    ``max_history``), on the options' device, batching as asked, with the options' decoding
    overrides on top of the policy's decoding."""
    from rasa_hred.core.decoding import DecodingError

    policy = settings.policy_config | {"max_history": settings.max_history}
    try:
        generator = load_policy_generator(
            settings.model_dir,
            policy,
            device=options.device,
            dtype=options.dtype,
            batching=options.batching,
            batch_wait_ms=options.batch_wait_ms,
            max_batch_size=options.max_batch_size,
        )
    except HREDPolicyError as error:  # the archive's policy config; a bad model says where
        raise UserError(f"{options.model}: {error}") from error
    if options.decoding:
        try:
            generator.decoding = generator.decoding.replace(**options.decoding)
        except (DecodingError, TypeError, ValueError) as error:
            generator.close()
            raise UserError(f"decoding options: {error}") from error
    return generator


def serve(options: ServeOptions) -> int:
    """Load the model, then serve until SIGTERM/SIGINT (returns 0)."""
    from rasa_hred.serving.threads import use_serving_threads

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    use_serving_threads(options.threads)
    with tempfile.TemporaryDirectory(prefix="rasa-hred-serve-") as scratch:
        settings = resolve_settings(options, Path(scratch))
        domain = load_domain(settings.domain)
        generator = build_generator(options, settings)
        try:
            app = create_app(
                generator,
                domain,
                token=options.token or None,
                responses=settings.responses,
                max_history=settings.max_history,
                max_body_bytes=options.max_body_bytes,
                max_events=options.max_events,
                fallback_response=settings.fallback_response,
                model_name=settings.model_name,
                shutdown_timeout=options.shutdown_timeout,
            )
            logger.info(
                f"serving {settings.model_name} on http://{options.host}:{options.port}/nlg "
                f"(device {generator.device}, responses {', '.join(settings.responses)}, "
                f"max_history {settings.max_history}, batching "
                f"{'on' if generator.batching else 'off'}, token "
                f"{'required' if options.token else 'off'})"
            )
            sys.stdout.flush()
            app.run(
                host=options.host,
                port=options.port,
                workers=1,
                access_log=options.access_log,
                motd=False,
                register_sys_signals=True,
            )
        finally:
            generator.close()
    logger.info("stopped")
    return 0


def write_nlg_config(archive: Path, config: Path, out: Path) -> Path:
    """A Rasa config that generates in the NLG server, using the HRED already trained into a
    model archive (so ``rasa train`` need not retrain it): ``out/config.yml``, ``config``
    with ``generate: nlg_server`` and ``model: out/hred`` on its HREDPolicy
    (``integration.derive``). Returns the config's path."""
    return derive_config(archive, config, out, "nlg_server")
