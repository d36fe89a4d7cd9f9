"""``rasa-hred bench ...``: benchmarks that print figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rasa_hred.integration.names import RESPONSE


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
    bench.set_defaults(handler=bench_train_command)


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
    bench.set_defaults(handler=bench_generate_command)


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
    bench.add_argument("--batch-wait-ms", type=float, default=0.0)
    bench.add_argument("--threads", type=int, help="the server's PyTorch CPU threads")
    bench.add_argument("--json", action="store_true", help="print a JSON list")
    bench.set_defaults(handler=bench_serve_command)


def _add_bench_rasa(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "rasa",
        help="REST round trip through `rasa run`: an HRED turn vs a rule turn",
        description=(
            "Start `rasa run` (REST channel, --enable-api) with the model on a free port of "
            "127.0.0.1, then time REST messages one after another, interleaved: chit-chat "
            f"lines the HRED answers ({RESPONSE}) and 'hello' answered by a rule "
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
    bench.set_defaults(handler=bench_rasa_command)


# --- the adapters -------------------------------------------------------------------------


def bench_train_command(args: argparse.Namespace) -> int:
    from rasa_hred.bench.train import run

    result = run(
        device=args.device,
        threads=args.threads,
        batch_size=args.batch_size,
        dialogues=args.dialogues,
        seconds=args.seconds,
        cpu_bf16=args.cpu_bf16,
    )
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def bench_generate_command(args: argparse.Namespace) -> int:
    from rasa_hred.bench.generate import run

    results = run(
        device=args.device,
        threads=args.threads,
        beams=args.beams,
        contexts=args.contexts,
        latency_runs=args.latency_runs,
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    header = f"{'beam':>5} {'p50 ms':>8} {'p95 ms':>8} {'seq/s':>8} {'batch/s':>9} {'speedup':>8}"
    print(header)
    for r in results:
        print(
            f"{r['beam']:>5} {r['latency_ms_p50']:>8} {r['latency_ms_p95']:>8} "
            f"{r['sequential_replies_per_s']:>8} {r['batched_replies_per_s']:>9} "
            f"{r['batched_speedup']:>8}"
        )
    print(f"device {results[0]['device']}, {results[0]['threads']} threads" if results else "")
    return 0


def bench_serve_command(args: argparse.Namespace) -> int:
    from rasa_hred.bench.serve import run

    modes = {"both": [True, False], "on": [True], "off": [False]}[args.batching]
    rows = run(
        device=args.device,
        seconds=args.seconds,
        clients=args.clients,
        modes=modes,
        beam_size=args.beam_size,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        threads=args.threads,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'clients':>7} {'batching':>8} {'rps':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'errors':>6} {'batch':>6} {'rss MB':>7}"
    )
    for r in rows:
        print(
            f"{r['clients']:>7} {('on' if r['batching'] else 'off'):>8} {r['rps']:>8} "
            f"{r['p50_ms']!s:>8} {r['p95_ms']!s:>8} {r['p99_ms']!s:>8} {r['errors']:>6} "
            f"{r['mean_batch']:>6} {r['peak_rss_mb']!s:>7}"
        )
    return 0


def bench_rasa_command(args: argparse.Namespace) -> int:
    from rasa_hred.bench.rasa import run_bench_rasa

    result = run_bench_rasa(
        Path(args.model),
        messages=args.messages,
        warmup=args.warmup,
        startup_timeout=args.startup_timeout,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'':6} {'p50 ms':>8} {'p95 ms':>8} {'n':>4}")
    for kind in ("hred", "rule"):
        r = result[kind]
        print(f"{kind:6} {r['p50_ms']!s:>8} {r['p95_ms']!s:>8} {r['n']:>4}")
    generation = result["in_process_generate"]
    print(f"HRED turn - rule turn: {result['hred_added_ms_p50']} ms (p50)")
    if "hred_lines" in generation:
        every = generation["policy"]["generates_on_every_user_turn"]
        print(
            f"in-process generation: {generation['hred_lines']['p50_ms']} ms (p50), paid by "
            + ("every user turn, the rule turn too" if every else "HRED turns only")
        )
    print(f"device {result['device']}, load average {result['load_avg_1m']}")
    return 0
