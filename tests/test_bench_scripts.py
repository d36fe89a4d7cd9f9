"""Smoke test of the two end-to-end benchmarks, with tiny counts, against the demo model.

``rasa-hred bench rasa`` (which first derives an in_process archive from the demo model, in
the demo's project) and ``scripts/bench_alexa.py`` each start their own ``rasa run``
on a free port of 127.0.0.1; the two run side by side to keep the test short. Only the JSON
shape and the correctness checks the benchmarks make are asserted, never a timing.
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

TIMEOUT_S = 900
# One mode: the derived in_process archive (the in_nlg one is derived and run the same way).
RASA_ARGS = ["--modes", "in_process", "--messages", "2", "--warmup", "1"]
RASA_ARGS += ["--users", "1", "3", "--turns", "2"]
RASA_ARGS += ["--seconds", "30", "--json"]
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
        [
            BIN / "rasa-hred",
            "bench",
            "rasa",
            "--model",
            str(demo_model),
            "--project",
            str(demo_model.parent.parent),  # the demo project the archive was trained in
            *RASA_ARGS,
        ],
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
    assert list(rest["modes"]) == ["in_process"]
    for mode, figures in rest["modes"].items():
        assert figures["policy"]["generate"] == mode
        # demo: fallback_threshold set, so in_process generates on every user turn
        assert figures["policy"]["generates_on_every_user_turn"] is (mode == "in_process")
        assert Path(figures["archive"]).is_file() and figures["derive_s"] >= 0
        threads = figures["threads"]
        assert isinstance(threads["intra_op"], int) and threads["intra_op"] >= 1
        assert threads["source"].startswith("PyTorch's default")  # the demo sets no threads
        sequential = figures["sequential"]
        for kind in ("hred", "rule"):
            assert {"p50_ms", "p95_ms", "n", "sent", "errors"} <= sequential[kind].keys()
            assert sequential[kind]["errors"] == 0 and sequential[kind]["sent"] == 2
        # at least one reply verified as HREDPolicy's utter_hred, one as RulePolicy's
        assert sequential["hred"]["n"] >= 1 and sequential["rule"]["n"] >= 1
        assert isinstance(sequential["hred_added_ms_p50"], float)
        assert [run["users"] for run in figures["concurrent"]] == [1, 3]
        for run in figures["concurrent"]:
            assert run["errors"] == 0 and run["answered"] == run["sent"] >= run["users"]
            assert 1 <= run["hred_answers"] <= run["answered"]  # HREDPolicy really answered
            assert run["rps"] > 0
            assert {"p50_ms", "p99_ms"} <= run.keys()
        assert "load_avg_1m" in figures
    assert rest["device"] in ("cpu", "cuda")
    assert "load_avg_1m" in rest and "load_avg_1m_at_start" in rest
    generation = rest["in_process_generate"]
    assert generation["hred_lines"]["n"] == 2 and generation["threads"] >= 1

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
