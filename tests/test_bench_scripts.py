"""Smoke test of the two end-to-end benchmarks, with tiny counts, against the demo model.

``rasa-hred bench rasa`` and ``scripts/bench_alexa.py`` each start their own ``rasa run`` on a
free port of 127.0.0.1; the two run side by side to keep the test short. Only the JSON shape
and the correctness checks the benchmarks make are asserted, never a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BIN, RASA_ENV, REPO

pytestmark = pytest.mark.slow

TIMEOUT_S = 240
RASA_ARGS = ["--messages", "2", "--warmup", "1", "--json"]
ALEXA_ARGS = ["--verify-requests", "20", "--sequential", "2"]
ALEXA_ARGS += ["--users", "3", "--seconds", "2", "--json"]


def _finish(process: subprocess.Popen, deadline: float) -> dict:
    try:
        out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.terminate()  # the benchmark stops its rasa run on SIGTERM
        out, err = process.communicate(timeout=60)
        pytest.fail(f"{process.args} timed out:\n{err[-3000:]}")
    assert process.returncode == 0, f"{process.args}:\n{out[-2000:]}\n{err[-3000:]}"
    return json.loads(out)


def test_bench_rasa_and_bench_alexa(demo_model: Path, tmp_path: Path):
    common = {"cwd": tmp_path, "env": RASA_ENV, "stdout": subprocess.PIPE, "text": True}
    rasa = subprocess.Popen(
        [BIN / "rasa-hred", "bench", "rasa", "--model", str(demo_model), *RASA_ARGS],
        stderr=subprocess.PIPE,
        **common,
    )
    alexa = subprocess.Popen(
        [
            sys.executable,
            REPO / "scripts" / "bench_alexa.py",
            "--model",
            str(demo_model),
            *ALEXA_ARGS,
        ],
        stderr=subprocess.PIPE,
        **common,
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        rest = _finish(rasa, deadline)
        speech = _finish(alexa, deadline)
    finally:
        for process in (rasa, alexa):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)

    # rasa-hred bench rasa
    for kind in ("hred", "rule"):
        assert {"p50_ms", "p95_ms", "n"} <= rest[kind].keys()
    assert rest["hred"]["n"] >= 1  # at least one reply verified as HREDPolicy's utter_hred
    assert rest["rule"]["n"] >= 1
    assert rest["hred"]["errors"] == rest["rule"]["errors"] == 0
    assert isinstance(rest["hred_added_ms_p50"], float)
    assert rest["device"] in ("cpu", "cuda")
    assert "load_avg_1m" in rest
    generation = rest["in_process_generate"]
    assert generation["hred_lines"]["n"] == 2
    assert generation["policy"]["generates_on_every_user_turn"] is True  # demo: threshold set

    # scripts/bench_alexa.py
    verify = speech["verify"]
    assert verify["n"] == 20 and verify["p50_ms"] > 0
    assert verify["tampered_body_rejected"] is True
    sequential = speech["sequential"]
    for kind in ("alexa_hred", "alexa_rule", "rest_rule"):
        assert {"p50_ms", "p95_ms", "n", "errors"} <= sequential[kind].keys()
        assert sequential[kind]["errors"] == 0
    assert sequential["alexa_hred"]["n"] >= 1
    load = speech["load"]
    assert load["users"] == 3 and load["requests"] >= 3
    assert load["errors"] == 0
    assert load["histories_separate"] is True
    assert load["history_check"]["trackers"] == 3
    assert {"p50_ms", "p95_ms", "timeout_replies"} <= load.keys()
    assert "load_avg_1m" in speech
