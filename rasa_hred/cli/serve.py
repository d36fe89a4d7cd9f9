"""``rasa-hred serve`` (the NLG server) and ``rasa-hred nlg-config``."""

from __future__ import annotations

import argparse

from rasa_hred.cli.common import lazy
from rasa_hred.cli.generate import add_decoding_options


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
    serve.add_argument("--host", default="127.0.0.1", help="address to bind")
    serve.add_argument("--port", type=int, default=5056)
    serve.add_argument(
        "--token",
        help="require ?token=T or 'Authorization: Bearer T' on /nlg and /metrics "
        "(default: $RASA_HRED_NLG_TOKEN, else none)",
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
    serve.add_argument("--max-batch-size", type=int, default=32, help="contexts per batch")
    serve.add_argument(
        "--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill"
    )
    serve.add_argument(
        "--max-body-bytes", type=int, default=1_000_000, help="larger requests get 413"
    )
    serve.add_argument(
        "--max-events", type=int, default=10_000, help="only the last N tracker events are read"
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests may take to finish after SIGTERM",
    )
    serve.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--decoding",
        metavar="JSON",
        help="more decoding options as a JSON object, e.g. '{\"force_length\": 20}'",
    )
    serve.set_defaults(handler=lazy("rasa_hred.nlg_server.app", "serve_command"))

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
    config.set_defaults(handler=lazy("rasa_hred.nlg_server.app", "nlg_config_command"))
