"""``rasa-hred bench rasa``: the REST round trip through ``rasa run``, HRED turn vs rule turn.

Starts ``rasa run`` (a subprocess, REST channel, ``--enable-api``) on a free port of
127.0.0.1 with the given model, waits until it answers, warms up, then posts messages to
``/webhooks/rest/webhook`` one after another, interleaved:

- ``hred``: chit-chat lines the HRED policy answers (``utter_hred``), each from a fresh sender
  so the HRED's context is one utterance;
- ``rule``: ``"hello"``, answered by the rule ``greet -> utter_greet``, also from fresh senders
  (a fresh sender costs both kinds the same session start).

Afterwards (untimed) every sample's tracker is fetched (``GET /conversations/<id>/tracker``)
and a sample counts only if the expected policy really answered it: ``utter_hred`` predicted
by ``HREDPolicy``, ``utter_greet`` by ``RulePolicy``. ``hred_added_ms_p50`` is the difference
of the medians. The server is stopped afterwards whatever happens.

Mind what that difference means: Rasa runs every policy on every turn, and an HREDPolicy with
``fallback_threshold`` set (the demo's 0.35, the default) generates a reply for every user
turn, because it cannot know whether another policy will be surer. So the rule turn pays for
a generation too, and ``hred_added_ms_p50`` is near zero. ``in_process_generate`` therefore
also times the model's own generator (loaded from the archive as the policy loads it, with the
server stopped) on the same lines: the HRED's cost per user turn, on either kind of turn;
``in_process_generate.policy.generates_on_every_user_turn`` says whether the rule turn pays
it. The 1-minute load average is reported because other processes on the machine distort CPU
timings.

The ``rasa run`` helpers here (:func:`rasa_run`, :func:`fetch_tracker`, :func:`answered_by`)
are also used by ``scripts/bench_alexa.py``; timing summaries come from ``bench.common``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rasa_hred.bench.common import free_port, load_average, summary
from rasa_hred.errors import UserError
from rasa_hred.integration.names import POLICY_CLASS, RESPONSE

REPO = Path(__file__).resolve().parents[2]

HRED_LINES = (
    "what do you think about love?",
    "what's your favourite film of all time?",
    "do you like the rain?",
    "what did you do today?",
    "do you think Tarantino is overrated?",
    "what's the saddest film ever made?",
)
RULE_LINE = "hello"
HRED_ACTION, HRED_POLICY = RESPONSE, POLICY_CLASS
RULE_ACTION, RULE_POLICY = "utter_greet", "RulePolicy"

STARTUP_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 60.0


# --- helpers shared with scripts/bench_alexa.py ---------------------------------------------


def rasa_executable() -> str:
    candidate = Path(sys.executable).with_name("rasa")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("rasa")
    if found is None:
        raise UserError("cannot find the `rasa` executable next to this Python or on PATH")
    return found


def rasa_env(workdir: Path) -> dict[str, str]:
    """The environment for ``rasa run``: no telemetry, quiet TensorFlow, this repository
    importable (for ``alexa_connector`` / ``rasa_hred`` when not installed)."""
    return {
        **os.environ,
        "RASA_TELEMETRY_ENABLED": "false",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "SQLALCHEMY_SILENCE_UBER_WARNING": "1",
        "RASA_CACHE_DIRECTORY": str(workdir / "cache"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def _raise_system_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit (so ``finally`` blocks stop the server) in the main
    thread; elsewhere a no-op."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_system_exit)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def rasa_run(
    model: str | Path,
    credentials_yaml: str,
    workdir: Path,
    *,
    enable_api: bool = True,
    startup_timeout: float = STARTUP_TIMEOUT_S,
) -> Iterator[str]:
    """``rasa run`` on a free port of 127.0.0.1 with ``credentials_yaml`` as its credentials
    file (written into ``workdir``, also the server's working directory and log place);
    yields the base URL once ``GET /`` answers, and stops the server afterwards whatever
    happens (SIGTERM, then SIGKILL after 30 s)."""
    import requests

    model = Path(model).resolve()
    if not model.is_file():
        raise UserError(f"no model archive at {model} (train one with `make train`)")
    workdir.mkdir(parents=True, exist_ok=True)
    credentials = workdir / "credentials.yml"
    credentials.write_text(credentials_yaml)
    port = free_port()
    command = [
        rasa_executable(),
        "run",
        "--model",
        str(model),
        "--interface",
        "127.0.0.1",
        "--port",
        str(port),
        "--credentials",
        str(credentials),
    ]
    if enable_api:
        command.append("--enable-api")
    log_path = workdir / "rasa_run.log"
    url = f"http://127.0.0.1:{port}"
    with _sigterm_as_exit(), log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=rasa_env(workdir), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if process.poll() is not None:
                    raise UserError(
                        f"rasa run exited with {process.returncode}:\n"
                        + log_path.read_text(errors="replace")[-3000:]
                    )
                if time.monotonic() > deadline:
                    raise UserError(
                        f"rasa run did not answer within {startup_timeout:.0f} s:\n"
                        + log_path.read_text(errors="replace")[-3000:]
                    )
                try:
                    if requests.get(url, timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.5)
            yield url
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=30)


def fetch_tracker(session: Any, url: str, sender_id: str) -> dict[str, Any]:
    """The conversation tracker of ``sender_id`` (needs ``rasa run --enable-api``)."""
    quoted = urllib.parse.quote(sender_id, safe="")
    reply = session.get(f"{url}/conversations/{quoted}/tracker", timeout=REQUEST_TIMEOUT_S)
    reply.raise_for_status()
    return reply.json()


def answered_by(tracker: dict[str, Any], action: str, policy: str) -> bool:
    """Whether ``tracker`` shows ``action`` run on a prediction of ``policy``."""
    return any(
        event.get("event") == "action"
        and event.get("name") == action
        and policy in str(event.get("policy") or "")
        for event in tracker.get("events", [])
    )


def _device() -> str:
    """Where a policy with ``device: auto`` generates: CUDA when PyTorch sees one."""
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"


def in_process_generation(model: Path, runs: int, warmup: int = 3) -> dict[str, Any]:
    """Time the model's own HRED generator in this process, loaded as HREDPolicy loads it,
    on the benchmark's contexts: the chit-chat lines and the rule line (one utterance each,
    as for a fresh sender). Run with the server stopped."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from rasa_hred.integration.archive import extract_policy_model
    from rasa_hred.integration.loading import load_policy_generator, with_defaults

    with tempfile.TemporaryDirectory() as scratch:
        extracted = extract_policy_model(model, scratch)
        config = with_defaults(extracted.policy_config)
        policy = {
            "fallback_threshold": config["fallback_threshold"],
            "generate": config["generate"],
            "generates_on_every_user_turn": config["generate"] == "in_process"
            and bool(config["fallback_threshold"]),
        }
        if config["generate"] != "in_process":
            return {"skipped": "the policy does not generate in process", "policy": policy}
        generator = load_policy_generator(extracted.directory, config)
    try:
        lines = itertools.cycle(HRED_LINES)
        for _ in range(warmup):
            generator.generate([[next(lines)]])
            generator.generate([[RULE_LINE]])
        times: dict[str, list[float]] = {"hred_lines": [], "rule_line": []}
        lines = itertools.cycle(HRED_LINES)
        for _ in range(runs):
            for kind, text in (("hred_lines", next(lines)), ("rule_line", RULE_LINE)):
                start = time.perf_counter()
                generator.generate([[text]])
                times[kind].append((time.perf_counter() - start) * 1000.0)
    finally:
        generator.close()
    return {
        "hred_lines": summary(times["hred_lines"]),
        "rule_line": summary(times["rule_line"]),
        "device": str(generator.device),
        "policy": policy,
    }


# --- the benchmark ----------------------------------------------------------------------------


def _post_rest(session: Any, url: str, sender: str, text: str) -> tuple[float, bool]:
    """One REST turn: (round-trip ms, whether it was a 200 with at least one text)."""
    import requests

    start = time.perf_counter()
    try:
        reply = session.post(
            f"{url}/webhooks/rest/webhook",
            json={"sender": sender, "message": text},
            timeout=REQUEST_TIMEOUT_S,
        )
        elapsed = (time.perf_counter() - start) * 1000.0
        ok = reply.status_code == 200 and any(
            isinstance(m, dict) and m.get("text") for m in reply.json()
        )
    except (requests.RequestException, ValueError):
        return (time.perf_counter() - start) * 1000.0, False
    return elapsed, ok


def run_bench_rasa(
    model: Path,
    messages: int = 50,
    warmup: int = 3,
    startup_timeout: float = STARTUP_TIMEOUT_S,
) -> dict[str, Any]:
    """The benchmark (see the module docstring): ``messages`` timed REST messages of each
    kind after ``warmup`` untimed ones, through ``rasa run`` with the archive ``model``."""
    import requests

    if messages < 1:
        raise UserError("--messages must be at least 1")
    run_id = uuid.uuid4().hex[:8]
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-rasa-") as scratch:
        started = time.monotonic()
        with rasa_run(model, "rest:\n", Path(scratch), startup_timeout=startup_timeout) as url:
            startup_s = time.monotonic() - started
            session = requests.Session()
            lines = itertools.cycle(HRED_LINES)
            for i in range(warmup):
                _post_rest(session, url, f"warmup-{run_id}-h{i}", next(lines))
                _post_rest(session, url, f"warmup-{run_id}-r{i}", RULE_LINE)

            samples: dict[str, list[tuple[str, float, bool]]] = {"hred": [], "rule": []}
            lines = itertools.cycle(HRED_LINES)
            for i in range(messages):
                # alternate which kind goes first, so neither always follows the other
                order = ("hred", "rule") if i % 2 == 0 else ("rule", "hred")
                for kind in order:
                    sender = f"bench-{run_id}-{kind}-{i}"
                    text = next(lines) if kind == "hred" else RULE_LINE
                    elapsed, ok = _post_rest(session, url, sender, text)
                    samples[kind].append((sender, elapsed, ok))

            # untimed: which policy really answered each sample
            expected = {"hred": (HRED_ACTION, HRED_POLICY), "rule": (RULE_ACTION, RULE_POLICY)}
            result: dict[str, Any] = {}
            for kind, rows in samples.items():
                verified = []
                errors = 0
                for sender, elapsed, ok in rows:
                    if not ok:
                        errors += 1
                        continue
                    if answered_by(fetch_tracker(session, url, sender), *expected[kind]):
                        verified.append(elapsed)
                result[kind] = {
                    **summary(verified),
                    "sent": len(rows),
                    "errors": errors,
                    "answered_by_other_policy": len(rows) - errors - len(verified),
                    "expected": f"{expected[kind][0]} by {expected[kind][1]}",
                }
            session.close()

    if result["hred"]["n"] == 0:
        raise UserError(
            "no chit-chat message was answered by HREDPolicy's utter_hred; is the model's "
            "config using rasa_hred.HREDPolicy?"
        )
    hred_p50, rule_p50 = result["hred"]["p50_ms"], result["rule"]["p50_ms"]
    load_server_end = load_average()
    generation = in_process_generation(model, runs=messages, warmup=warmup)
    result.update(
        hred_added_ms_p50=None if rule_p50 is None else round(hred_p50 - rule_p50, 2),
        in_process_generate=generation,
        model=str(model),
        senders="fresh sender per message (HRED context: one utterance)",
        warmup_per_kind=warmup,
        startup_s=round(startup_s, 1),
        device=generation.get("device") or _device(),
        load_avg_1m=load_server_end,
        load_avg_1m_at_start=load_start,
        load_avg_1m_at_end=load_average(),
        cpu_count=os.cpu_count(),
    )
    return result
