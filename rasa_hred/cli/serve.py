"""``rasa-hred serve`` (the NLG server) and ``rasa-hred nlg-config``: their flags, and the
adapters that turn the flags into ``rasa_hred.nlg_server.command``'s typed settings."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from rasa_hred.cli.generate import add_decoding_options, decoding_overrides
from rasa_hred.errors import UserError
from rasa_hred.nlg_server import defaults

TOKEN_VARIABLE = "RASA_HRED_NLG_TOKEN"


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve HRED replies (and every other domain response) to Rasa over HTTP",
        description=(
            "An NLG server for Rasa (endpoints.yml: nlg: url: http://HOST:PORT/nlg). It "
            "answers the HRED responses (--responses) with the model's reply to the "
            "conversation in the tracker, batching concurrent conversations, and renders "
            "every other response from the domain as Rasa's templated NLG does. --model is a "
            "model directory (then --domain is required) or a Rasa model archive (its "
            "HREDPolicy's model, domain, max_history, decoding and response are used). Pair "
            "it with `generate: nlg_server` in the policy's config. GET /health and "
            "/metrics (Prometheus) too. SIGTERM lets in-flight requests finish."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_decoding_options(serve)
    for action in serve._actions:
        if action.dest == "model":
            action.metavar = "DIR|ARCHIVE"
            action.help = "model directory, or a Rasa model archive with an HREDPolicy"
    serve.add_argument("--domain", help="domain file or directory (default: the archive's domain)")
    serve.add_argument("--host", default=defaults.HOST, help="address to bind")
    serve.add_argument("--port", type=int, default=defaults.PORT)
    serve.add_argument(
        "--token",
        help="require ?token=T or 'Authorization: Bearer T' on /nlg and /metrics "
        f"(default: ${TOKEN_VARIABLE}, else none)",
    )
    serve.add_argument(
        "--responses",
        nargs="+",
        metavar="NAME",
        help="responses the HRED generates (default: the policy's response, utter_hred)",
    )
    serve.add_argument(
        "--max-history",
        type=int,
        help="conversation turns the HRED sees (default: the policy's max_history, else 10)",
    )
    serve.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decode concurrent requests as one batch",
    )
    serve.add_argument(
        "--max-batch-size", type=int, default=defaults.MAX_BATCH_SIZE, help="contexts per batch"
    )
    serve.add_argument(
        "--batch-wait-ms",
        type=float,
        default=defaults.BATCH_WAIT_MS,
        help="extra time a batch waits to fill (0: an idle server starts one at once; requests "
        "arriving during a batch always form the next)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=defaults.MAX_BODY_BYTES,
        help="larger requests get 413 (Rasa posts the whole tracker, about 2.3 KB a turn: "
        "the default holds some 29,000 turns; it bounds what a client can make the server "
        "read)",
    )
    serve.add_argument(
        "--max-events",
        type=int,
        default=defaults.MAX_EVENTS,
        help="only the last N tracker events are kept (the HRED needs the current "
        "session's last turns)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=defaults.SHUTDOWN_TIMEOUT,
        help="seconds in-flight requests may take to finish after SIGTERM",
    )
    serve.add_argument(
        "--threads",
        type=int,
        help="PyTorch's CPU threads for generation (default: PyTorch's, one per core; use 1 "
        "where other busy processes share the cores: beside one, two threads on two cores "
        "replied 2.6x slower than one)",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--decoding",
        metavar="JSON",
        help="more decoding options as a JSON object, e.g. '{\"force_length\": 20}'",
    )
    serve.set_defaults(handler=serve_command)

    config = commands.add_parser(
        "nlg-config",
        help="write a Rasa config whose HREDPolicy generates through `rasa-hred serve`",
        description=(
            "Copy the HRED of a trained Rasa model archive to OUT/hred and write "
            "OUT/config.yml: CONFIG with `generate: nlg_server` and `model: OUT/hred` on "
            "its HREDPolicy. `rasa train --config OUT/config.yml` then gives an assistant "
            "with the same HRED that leaves generation to the NLG server (make run-nlg)."
        ),
    )
    config.add_argument("--archive", required=True, help="a model archive from `rasa train`")
    config.add_argument("--config", default="config.yml", help="the Rasa config to adapt")
    config.add_argument("--out", required=True, help="output directory")
    config.set_defaults(handler=nlg_config_command)


def decoding_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding flags given (as ``respond``), then ``--decoding JSON`` on top."""
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


def serve_command(args: argparse.Namespace) -> int:
    """``rasa-hred serve``: the flags as ``ServeOptions``, then serve until SIGTERM/SIGINT."""
    from rasa_hred.nlg_server.command import ServeOptions, serve

    options = ServeOptions(
        model=Path(args.model),
        domain=Path(args.domain) if args.domain else None,
        host=args.host,
        port=args.port,
        token=args.token if args.token is not None else os.environ.get(TOKEN_VARIABLE),
        responses=args.responses,
        max_history=args.max_history,
        device=args.device,
        dtype=args.dtype,
        batching=args.batching,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_body_bytes=args.max_body_bytes,
        max_events=args.max_events,
        shutdown_timeout=args.shutdown_timeout,
        threads=args.threads,
        access_log=args.access_log,
        decoding=decoding_flags(args),
    )
    return serve(options)


def nlg_config_command(args: argparse.Namespace) -> int:
    """``rasa-hred nlg-config``: write the config and print its path."""
    from rasa_hred.nlg_server.command import write_nlg_config

    print(write_nlg_config(Path(args.archive), Path(args.config), Path(args.out)))
    return 0
