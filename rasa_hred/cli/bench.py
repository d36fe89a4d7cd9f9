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
            "utterances after the first (tokens_per_s_full_loss), in float32 and under "
            "bfloat16 autocast. On a CPU at batch 50 the anchor's training work "
            "(hsgodhia/hred, rebuilt in rasa_hred/bench/anchor.py) is timed in the same run "
            "for speedup_vs_anchor(_cpu_bf16); each setting's seconds are taken in four "
            "slices, in turns with the others'."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench.add_argument("--threads", type=int, default=2, help="CPU threads (0 = PyTorch's choice)")
    bench.add_argument("--batch-size", type=int, help="default 50 on CPU, 256 on CUDA")
    bench.add_argument("--dialogues", type=int, default=2000, help="synthetic triples")
    bench.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="timed seconds per setting, after an untimed pass over the batches",
    )
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
            "20 steps, trigram blocking on, MMI off, contexts of two ~18-token utterances, "
            "in float32 and in the dtype 'auto' resolves to (bfloat16 where the CPU/GPU "
            "multiplies it natively). Per beam size: the latency of one reply (p50, p95) in "
            "each dtype, replies/s one context after another in float32 and in one batch in "
            "the auto dtype (4x the contexts on CUDA), and batched_speedup, their ratio. "
            "Fields: rasa_hred/bench/generate.py."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to decode"
    )
    bench.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch")
    bench.add_argument("--beams", type=int, nargs="+", default=[5, 20], help="beam sizes")
    bench.add_argument(
        "--contexts",
        type=int,
        default=64,
        help="contexts of the sequential run and of the batch (fewer: a faster, noisier run)",
    )
    bench.add_argument(
        "--latency-runs", type=int, default=30, help="timed single replies of each dtype"
    )
    bench.add_argument("--json", action="store_true", help="print a JSON object")
    bench.set_defaults(handler=bench_generate_command)


def _add_bench_serve(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "serve",
        help="NLG server throughput and latency under concurrent clients, batching on/off",
        description=(
            "Start `rasa-hred serve` (a subprocess) with an untrained HRED at the seed's "
            "configuration (vocabulary 10,004, embeddings and hidden 300, beam 5, every reply "
            "20 tokens), with batching on (--dtype auto: bfloat16 where the CPU/GPU "
            "multiplies it natively) and batching off (--dtype float32), and drive it from "
            "this process with N concurrent clients for --seconds each. Prints per run: "
            "clients, batching, dtype, rps, p50/p95/p99 latency (ms), errors, mean batch size "
            "and the server's peak RSS (MB); then speedup_32, rps with batching on over rps "
            "with it off at 32 clients. Fields: rasa_hred/bench/serve.py."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="the server's device"
    )
    bench.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="timed seconds per run (then in-flight requests finish; the warm-up before each "
        "server's first run takes min(3, SECONDS))",
    )
    bench.add_argument(
        "--clients",
        type=int,
        nargs="+",
        default=[1, 8, 32, 128],
        help="concurrent client counts, one run each (speedup_32 needs 32)",
    )
    bench.add_argument(
        "--batching",
        choices=["both", "on", "off"],
        default="both",
        help="server modes to measure: on = batching in the auto dtype, off = one request "
        "at a time in float32 (speedup_32 needs both)",
    )
    bench.add_argument("--beam-size", type=int, default=5, help="the server's beams per reply")
    bench.add_argument(
        "--max-batch-size", type=int, default=32, help="the server's contexts per batch"
    )
    bench.add_argument(
        "--batch-wait-ms", type=float, default=0.0, help="the server's extra wait for a batch"
    )
    bench.add_argument(
        "--threads", type=int, help="the server's PyTorch CPU threads (default: PyTorch's)"
    )
    bench.add_argument("--json", action="store_true", help="print a JSON object")
    bench.set_defaults(handler=bench_serve_command)


def _add_bench_rasa(sub: argparse._SubParsersAction) -> None:
    from rasa_hred.bench.rasa import DERIVE_COST, MODES

    bench = sub.add_parser(
        "rasa",
        help="REST round trips through `rasa run`: generate in_process vs in_nlg",
        description=(
            "Compare the HREDPolicy's generate modes (in_process, in_nlg) on one HRED. From "
            "--model and the --project it was trained from, derive one archive per mode (the "
            "project's config with that mode and the archive's HRED, `rasa train` in the "
            f"project so Rasa's cache is reused: {DERIVE_COST}; kept in "
            "<archive>.bench/<mode>/ and reused while nothing changed). Per mode, start `rasa "
            "run` (REST, --enable-api, endpoints naming rasa_hred.HREDTemplatedNLG, "
            "conversations in memory) on a free port of 127.0.0.1 and time: REST messages "
            f"one after another, chit-chat lines the HRED answers ({RESPONSE}) interleaved "
            "with 'hello' answered by a rule, each from a fresh sender (trackers confirm the "
            "policy; hred_added_ms_p50 is the difference of the medians); then N concurrent "
            "users, each posting its next line as soon as the previous is answered (rps, "
            "p50/p95/p99). Reports the PyTorch threads the server generates with and where "
            "that number comes from, the 1-minute load average, and the HRED generator's own "
            "time per reply (in_process_generate, servers stopped)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument(
        "--model", default="models/demo.tar.gz", help="a Rasa model archive (.tar.gz)"
    )
    bench.add_argument(
        "--project",
        default=".",
        help="the project the archive was trained from (config.yml, domain.yml, data/)",
    )
    bench.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="generate modes to compare"
    )
    bench.add_argument(
        "--messages", type=int, default=50, help="sequential timed messages of each kind"
    )
    bench.add_argument("--warmup", type=int, default=3, help="untimed messages of each kind")
    bench.add_argument(
        "--users", type=int, nargs="+", default=[1, 16], help="concurrent users, one run each"
    )
    bench.add_argument("--turns", type=int, default=50, help="messages per user at most")
    bench.add_argument("--seconds", type=float, default=20.0, help="seconds per run at most")
    bench.add_argument(
        "--threads",
        type=int,
        help="set the policy's threads option (PyTorch CPU threads) in the derived archives",
    )
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

    result = run(
        device=args.device,
        threads=args.threads,
        beams=args.beams,
        contexts=args.contexts,
        latency_runs=args.latency_runs,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    auto = result["auto_dtype"]
    print(
        f"{'beam':>5} {'p50 ms fp32':>12} {'p50 ms auto':>12} {'seq/s fp32':>11} "
        f"{'batch/s auto':>13} {'speedup':>8}"
    )
    for r in result["beams"]:
        print(
            f"{r['beam']:>5} {r['latency_ms_p50_fp32']:>12} {r['latency_ms_p50_auto']:>12} "
            f"{r['sequential_replies_per_s']:>11} {r['batched_replies_per_s']:>13} "
            f"{r['batched_speedup']:>8}"
        )
    print(
        f"device {result['device']}, {result['threads']} threads, auto = {auto}, "
        f"load average {result['load_avg_1m']}"
    )
    return 0


def bench_serve_command(args: argparse.Namespace) -> int:
    from rasa_hred.bench.serve import run

    modes = {"both": [True, False], "on": [True], "off": [False]}[args.batching]
    result = run(
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
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{'clients':>7} {'batching':>8} {'dtype':>9} {'rps':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'errors':>6} {'batch':>6} {'rss MB':>7}"
    )
    for r in result["runs"]:
        print(
            f"{r['clients']:>7} {('on' if r['batching'] else 'off'):>8} {r['dtype']:>9} "
            f"{r['rps']:>8} {r['p50_ms']!s:>8} {r['p95_ms']!s:>8} {r['p99_ms']!s:>8} "
            f"{r['errors']:>6} {r['mean_batch']:>6} {r['peak_rss_mb']!s:>7}"
        )
    print(
        f"speedup_32 {result['speedup_32']}, device {result['device']}, "
        f"load average {result['load_avg_1m']}"
    )
    return 0


def bench_rasa_command(args: argparse.Namespace) -> int:
    from rasa_hred.bench.rasa import run_bench_rasa

    result = run_bench_rasa(
        Path(args.model),
        Path(args.project),
        modes=args.modes,
        messages=args.messages,
        warmup=args.warmup,
        users=args.users,
        turns=args.turns,
        seconds=args.seconds,
        threads=args.threads,
        startup_timeout=args.startup_timeout,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for mode, figures in result["modes"].items():
        threads = figures["threads"]
        print(f"{mode}: {threads['intra_op']} threads, {threads['source']}")
        print(f"  {'':14} {'p50 ms':>8} {'p95 ms':>8} {'n':>4}")
        for kind in ("hred", "rule"):
            r = figures["sequential"][kind]
            print(f"  {kind + ' (1 by 1)':14} {r['p50_ms']!s:>8} {r['p95_ms']!s:>8} {r['n']:>4}")
        print(f"  HRED turn - rule turn: {figures['sequential']['hred_added_ms_p50']} ms (p50)")
        print(f"  {'users':>5} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
        for r in figures["concurrent"]:
            print(
                f"  {r['users']:>5} {r['rps']:>8} {r['p50_ms']!s:>8} {r['p99_ms']!s:>8} "
                f"{r['errors']:>6}"
            )
    generation = result["in_process_generate"]
    print(f"HRED generation in this process: {generation['hred_lines']['p50_ms']} ms (p50)")
    print(f"device {result['device']}, load average {result['load_avg_1m']}")
    return 0
