"""``rasa-hred bench generate``, ``bench serve`` and ``bench train`` at tiny sizes: the JSON
fields and their relations (dtype names, speedups as the ratio of the printed rates), never a
timing."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from rasa_hred.bench.serve import MODE_DTYPES, server_options, speedup
from rasa_hred.cli import build_parser, main
from rasa_hred.core.precision import resolve_dtype

CPU = torch.device("cpu")
AUTO = str(resolve_dtype("auto", CPU)).removeprefix("torch.")


def _subcommand(*names: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("benchmark", ["generate", "serve"])
def test_every_flag_says_what_it_does(benchmark):
    parser = _subcommand("bench", benchmark)
    assert all(action.help for action in parser._actions), benchmark


def test_defaults_are_the_issues_shapes():
    generate = _subcommand("bench", "generate").parse_args([])
    assert generate.beams == [5, 20] and generate.contexts == 64
    serve = _subcommand("bench", "serve").parse_args([])
    assert serve.clients == [1, 8, 32, 128] and serve.batching == "both"


def _bench_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    """``rasa-hred bench ARGV --device cpu --threads 1 --json``'s object (the process's torch
    thread count is restored afterwards)."""
    threads = torch.get_num_threads()
    try:
        code = main(["bench", *argv, "--device", "cpu", "--threads", "1", "--json"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_bench_generate_tiny(capsys):
    argv = ["generate", "--beams", "2", "--contexts", "3", "--latency-runs", "2"]
    result = _bench_json(capsys, *argv)
    assert result["device"] == "cpu"
    assert result["auto_dtype"] == AUTO
    assert result["steps"] == 20
    assert "load_avg_1m" in result and "load_avg_1m_at_start" in result
    [beam] = result["beams"]
    assert beam["beam"] == 2
    assert beam["sequential_contexts"] == beam["batched_contexts"] == 3
    for name in ("fp32", "auto"):
        assert 0 < beam[f"latency_ms_p50_{name}"] <= beam[f"latency_ms_p95_{name}"]
    assert beam["sequential_replies_per_s"] > 0
    assert beam["batched_replies_per_s"] > 0
    ratio = beam["batched_replies_per_s"] / beam["sequential_replies_per_s"]
    assert beam["batched_speedup"] == round(ratio, 2)


def test_bench_generate_rejects_empty_runs(capsys):
    assert main(["bench", "generate", "--contexts", "0"]) == 2
    assert "--contexts" in capsys.readouterr().err


@pytest.mark.parametrize("batching", [True, False])
def test_server_options_are_flags_of_rasa_hred_serve(batching):
    options = server_options(
        batching, device="cpu", beam_size=5, max_batch_size=32, batch_wait_ms=0.0, threads=1
    )
    args = build_parser().parse_args(["serve", "--model", "m", "--domain", "d", *options])
    assert args.batching is batching
    assert args.dtype == MODE_DTYPES[batching] == ("auto" if batching else "float32")
    assert (args.device, args.beam_size, args.threads) == ("cpu", 5, 1)


def test_speedup_is_on_over_off_at_that_client_count():
    rows = [
        {"clients": 32, "batching": True, "rps": 30.0},
        {"clients": 32, "batching": False, "rps": 12.0},
        {"clients": 8, "batching": True, "rps": 20.0},
    ]
    assert speedup(rows, 32) == 2.5
    assert speedup(rows, 8) is None  # no run with batching off
    assert speedup([{**rows[0]}, {**rows[1], "rps": 0.0}], 32) is None


@pytest.mark.slow  # two server subprocesses: 20-30 s on 2 cores
def test_bench_serve_tiny(capsys):
    argv = ["bench", "serve", "--device", "cpu", "--threads", "1", "--seconds", "1"]
    assert main([*argv, "--clients", "1", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["device"] == "cpu"
    assert result["auto_dtype"] == AUTO
    assert (result["beam_size"], result["steps"]) == (5, 20)
    assert "load_avg_1m" in result and "load_avg_1m_at_start" in result
    runs = {(run["batching"], run["clients"]): run for run in result["runs"]}
    assert set(runs) == {(True, 1), (True, 32), (False, 1), (False, 32)}
    for (batching, _), run in runs.items():
        assert run["dtype"] == (AUTO if batching else "float32")
        assert run["errors"] == 0
        assert run["rps"] > 0
        assert 0 < run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"]
        assert run["peak_rss_mb"] > 0
        assert run["mean_batch"] >= 1.0
    assert runs[False, 32]["mean_batch"] == 1.0  # batching off: one request at a time
    ratio = runs[True, 32]["rps"] / runs[False, 32]["rps"]
    assert result["speedup_32"] == round(ratio, 2)


@pytest.mark.slow  # about 20 optimisation steps of the seed-sized model
def test_bench_train_prints_fp32_and_bf16_side_by_side(capsys):
    argv = ["train", "--batch-size", "50", "--dialogues", "200", "--seconds", "0.01"]
    result = _bench_json(capsys, *argv)
    fp32, bf16 = result["tokens_per_s"], result["tokens_per_s_cpu_bf16"]
    assert fp32 > 0 and bf16 > 0 and result["load_avg_1m"] is not None
    assert result["cpu_bf16_speedup"] == pytest.approx(bf16 / fp32)
    anchor = result["anchor_tokens_per_s"]
    assert result["speedup_vs_anchor"] == pytest.approx(fp32 / anchor)
    assert result["speedup_vs_anchor_cpu_bf16"] == pytest.approx(bf16 / anchor)
