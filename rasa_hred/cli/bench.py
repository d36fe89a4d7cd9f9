"""``rasa-hred bench ...``: benchmarks that print figures."""

from __future__ import annotations

import argparse

from rasa_hred.cli.common import lazy


def add_commands(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="benchmarks that print JSON figures (training, generation, serving)",
        description="Benchmarks. Each prints JSON; none asserts a bar, they report figures.",
    )
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    _add_bench_train(sub)
    _add_bench_generate(sub)
    _add_bench_rasa(sub)
    _add_bench_serve(sub)


def _add_bench_train(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "train",
        help="training throughput at the seed's configuration on synthetic triples",
        description=(
            "Time optimisation steps of an HRED at the seed's configuration (embeddings and "
            "hidden 300, vocabulary 10,004) on synthetic MovieTriples-shaped triples, with the "
            "loss on the last utterance (tokens_per_s, the anchor's work) and on all "
            "utterances after the first (tokens_per_s_full_loss)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument("--threads", type=int, default=2, help="CPU threads (0 = PyTorch's choice)")
    bench.add_argument("--batch-size", type=int, help="default 50 on CPU, 256 on CUDA")
    bench.add_argument("--dialogues", type=int, default=2000, help="synthetic triples")
    bench.add_argument("--seconds", type=float, default=20.0, help="timed seconds per loss mode")
    bench.add_argument(
        "--cpu-bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time bfloat16 autocast on the CPU (tokens_per_s_cpu_bf16)",
    )
    bench.add_argument("--json", action="store_true", help="one line of JSON")
    bench.set_defaults(handler=lazy("rasa_hred.bench.train", "bench_train_command"))


def _add_bench_generate(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "generate",
        help="reply latency and throughput of beam search at the seed's configuration",
        description=(
            "Time beam search on an untrained HRED at the seed's configuration (embeddings "
            "and hidden 300, vocabulary 10,004, unidirectional, maxout), every reply exactly "
            "20 steps, trigram blocking on, MMI off, contexts of two ~18-token utterances. "
            "Per beam size: latency of one reply (p50, p95), replies/s one context after "
            "another and in one batch (4x the contexts on CUDA), and their ratio."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch")
    bench.add_argument("--beams", type=int, nargs="+", default=[5, 20], help="beam sizes")
    bench.add_argument("--contexts", type=int, default=64, help="contexts per throughput run")
    bench.add_argument("--latency-runs", type=int, default=30, help="timed single replies")
    bench.add_argument("--json", action="store_true", help="print a JSON list")
    bench.set_defaults(handler=lazy("rasa_hred.bench.generate", "bench_command"))


def _add_bench_serve(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "serve",
        help="NLG server throughput and latency under concurrent clients, batching on/off",
        description=(
            "Start `rasa-hred serve` (a subprocess) with an untrained HRED at the seed's "
            "configuration (vocabulary 10,004, embeddings and hidden 300, beam 5, every reply "
            "20 tokens), with batching on and off, and drive it from this process with N "
            "concurrent clients for --seconds each. Prints per run: clients, batching, rps, "
            "p50/p95/p99 latency (ms), errors and the server's peak RSS (MB)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument("--seconds", type=float, default=20.0, help="timed seconds per run")
    bench.add_argument(
        "--clients", type=int, nargs="+", default=[1, 8, 32, 128], help="concurrent clients"
    )
    bench.add_argument(
        "--batching",
        choices=["both", "on", "off"],
        default="both",
        help="server batching modes to measure",
    )
    bench.add_argument("--beam-size", type=int, default=5)
    bench.add_argument("--max-batch-size", type=int, default=32)
    bench.add_argument("--batch-wait-ms", type=float, default=5.0)
    bench.add_argument("--threads", type=int, help="the server's PyTorch CPU threads")
    bench.add_argument("--json", action="store_true", help="print a JSON list")
    bench.set_defaults(handler=lazy("rasa_hred.bench.serve", "bench_serve_command"))


def _add_bench_rasa(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "rasa",
        help="REST round trip through `rasa run`: an HRED turn vs a rule turn",
        description=(
            "Start `rasa run` (REST channel, --enable-api) with the model on a free port of "
            "127.0.0.1, then time REST messages one after another, interleaved: chit-chat "
            "lines the HRED answers (utter_hred) and 'hello' answered by a rule "
            "(utter_greet), each from a fresh sender. Trackers confirm which policy "
            "answered each sample; hred_added_ms_p50 is the difference of the medians. "
            "The server is stopped afterwards. An HREDPolicy with fallback_threshold set "
            "generates on every user turn, rule turns too, so in_process_generate also times "
            "the model's own generator (server stopped): the HRED's cost per turn."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--model", required=True, help="a Rasa model archive (.tar.gz)")
    bench.add_argument("--messages", type=int, default=50, help="timed messages of each kind")
    bench.add_argument("--warmup", type=int, default=3, help="untimed messages of each kind")
    bench.add_argument(
        "--startup-timeout", type=float, default=300.0, help="seconds to wait for rasa run"
    )
    bench.add_argument("--json", action="store_true", help="print a JSON object")
    bench.set_defaults(handler=lazy("rasa_hred.bench.rasa", "bench_rasa_command"))
