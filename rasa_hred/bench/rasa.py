"""``rasa-hred bench rasa``: REST round trips through ``rasa run``, per ``generate`` mode.

It compares the HREDPolicy's ``generate`` modes on one HRED: ``in_process`` (the policy
generates while predicting, on every user turn) and ``in_nlg`` (the policy only predicts
``utter_hred``; ``rasa_hred.HREDTemplatedNLG`` generates when it is said, micro-batched across
conversations).

Deriving the archives. From the one archive given (``--model``) and the project it was
trained from (``--project``: its config.yml, domain.yml and data/), each mode gets an archive
of its own: the project's config with that mode and the archive's HRED
(``integration.derive``), trained by ``rasa train`` in the project directory, so that Rasa's
training cache there (``.rasa/cache``) provides what did not change and the HRED is not
retrained. :data:`DERIVE_COST` says how long that takes. Derived archives are kept in
``<archive>.bench/<mode>/model.tar.gz`` next to the given one and reused while the archive,
the project's config, domain and data, and the options set on the policy are unchanged.

Per mode, ``rasa run`` (a subprocess: REST channel, ``--enable-api``, an endpoints.yml naming
``rasa_hred.HREDTemplatedNLG`` and no tracker store, so conversations live in memory) starts
on a free port of 127.0.0.1; once it answers, and after ``warmup`` untimed messages of each
kind, the mode's figures are:

- ``sequential``: REST messages posted one after another, interleaved: ``hred``, chit-chat
  lines, and ``rule``, "hello" (answered by the rule greet -> utter_greet), each from a fresh
  sender (so the HRED's context is one utterance, and both kinds pay the same session start).
  Per kind, the round trips (ms) of the samples the expected policy really answered
  (``utter_hred`` by HREDPolicy, ``utter_greet`` by RulePolicy, read afterwards from each
  sample's tracker), with ``sent``, ``errors`` and ``answered_by_other_policy``;
  ``hred_added_ms_p50`` is the difference of the medians. An ``in_process`` policy with
  ``fallback_threshold`` set generates on every user turn (it cannot know whether another
  policy will win), so there the rule turn pays for a generation too, of a reply to "hello"
  (often shorter: ``in_process_generate`` times both), and the difference is only what the
  two generations differ by; in ``in_nlg`` only a turn that says ``utter_hred`` generates.
- ``concurrent``: per number of users (1 and 16 by default), that many senders at once, each
  a fresh conversation posting its next chit-chat line as soon as the previous one is
  answered, until it has posted ``turns`` or ``seconds`` have passed (the replies due are
  then awaited). ``rps``: answered messages (a 200 with a text) per second of the run's wall
  time; ``p50_ms``, ``p95_ms``, ``p99_ms``: their round trips; ``errors``: the other
  messages; ``hred_answers``: the ``utter_hred`` actions of HREDPolicy in the users' trackers
  afterwards (a line the NLU routes elsewhere is answered by another policy).
- ``policy``: the derived policy's ``generate``, ``fallback_threshold`` and whether it
  generates on every user turn. ``threads``: the PyTorch intra-op threads the ``rasa run``
  process generates with (``intra_op``) and where that number comes from (``source``): the
  policy's ``threads`` option, which the policy applies when it loads its model, else
  PyTorch's default in the server's environment, which a fresh interpreter with that
  environment reports (``rasa run`` itself cannot be asked).
- ``startup_s`` (until ``rasa run`` answered) and ``load_avg_1m`` after the mode's runs.

``in_process_generate`` times the HRED's generator itself in this process, loaded as the
policies load it (from a derived archive, one context at a time, every server stopped), on
the chit-chat lines and on "hello": the cost of one generation. The 1-minute load average is
reported at the start and the end because other processes on the machine distort CPU timings.

The ``rasa run`` helpers here (:func:`rasa_run`, :func:`fetch_tracker`, :func:`answered_by`)
are also used by ``scripts/bench_alexa.py``; timing summaries come from ``bench.common``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rasa_hred.bench.common import free_port, load_average, percentile, summary
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

#: The modes compared (``nlg_server`` needs a server of its own: ``bench serve`` times that).
MODES = ("in_process", "in_nlg")
#: How long deriving one mode's archive takes (the demo's, measured on 2 busy cores).
DERIVE_COST = (
    "about 30 s per mode where Rasa's cache in the project holds the rest (only the "
    "HREDPolicy is re-fitted: a copy of the HRED), about 3.5 min where it does not (NLU and "
    "the other policies are fitted too, as by a first `rasa train`); never the HRED's own "
    "training (the demo's: about 12 min)"
)
#: For every mode: HREDTemplatedNLG generates for an in_nlg policy and says the slot an
#: in_process one filled; no tracker store, so conversations live in memory.
ENDPOINTS_YAML = "nlg:\n  type: rasa_hred.HREDTemplatedNLG\n"

STARTUP_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 60.0
TRAIN_TIMEOUT_S = 3600.0
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


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


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@contextlib.contextmanager
def rasa_run(
    model: str | Path,
    credentials_yaml: str,
    workdir: Path,
    *,
    endpoints_yaml: str | None = None,
    enable_api: bool = True,
    startup_timeout: float = STARTUP_TIMEOUT_S,
) -> Iterator[str]:
    """``rasa run`` on a free port of 127.0.0.1 with ``credentials_yaml`` as its credentials
    file and ``endpoints_yaml`` (if given) as its endpoints file, both written into
    ``workdir``, also the server's working directory and log place; yields the base URL once
    ``GET /`` answers, and stops the server afterwards whatever happens (SIGTERM, then
    SIGKILL after 30 s)."""
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
    if endpoints_yaml is not None:
        endpoints = workdir / "endpoints.yml"
        endpoints.write_text(endpoints_yaml)
        command += ["--endpoints", str(endpoints)]
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
            _stop(process)


def fetch_tracker(session: Any, url: str, sender_id: str) -> dict[str, Any]:
    """The conversation tracker of ``sender_id`` (needs ``rasa run --enable-api``)."""
    quoted = urllib.parse.quote(sender_id, safe="")
    reply = session.get(f"{url}/conversations/{quoted}/tracker", timeout=REQUEST_TIMEOUT_S)
    reply.raise_for_status()
    return reply.json()


def answers_by(tracker: dict[str, Any], action: str, policy: str) -> int:
    """How many times ``tracker`` shows ``action`` run on a prediction of ``policy``."""
    return sum(
        event.get("event") == "action"
        and event.get("name") == action
        and policy in str(event.get("policy") or "")
        for event in tracker.get("events", [])
    )


def answered_by(tracker: dict[str, Any], action: str, policy: str) -> bool:
    """Whether ``tracker`` shows ``action`` run on a prediction of ``policy``."""
    return answers_by(tracker, action, policy) > 0


def _device() -> str:
    """Where a policy with ``device: auto`` generates: CUDA when PyTorch sees one."""
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"


# --- deriving one archive per mode ------------------------------------------------------------


@dataclass(frozen=True)
class Derived:
    """A mode's archive and what it took to get it."""

    archive: Path
    policy: dict[str, Any]  # the derived HREDPolicy's options (as config.yml sets them)
    seconds: float
    reused: bool  # an archive derived earlier from the same inputs


def _project_files(project: Path) -> tuple[Path, Path, Path]:
    """The project's config.yml, domain (file or folder) and data folder."""
    config, data = project / "config.yml", project / "data"
    domain = project / "domain.yml" if (project / "domain.yml").exists() else project / "domain"
    for path in (config, domain, data):
        if not path.exists():
            raise UserError(
                f"--project {project}: no {path.name} (the project the archive was trained "
                "from: config.yml, domain.yml, data/)"
            )
    return config, domain, data


def _digest(paths: Sequence[Path], extra: str) -> str:
    """One hash of ``extra`` and the names and contents of the files at or under ``paths``."""
    digest = hashlib.sha256(extra.encode())
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for file in files:
            digest.update(str(file.relative_to(root.parent)).encode() + b"\0")
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _train_env(project: Path) -> dict[str, str]:
    """``rasa train``'s environment: as ``rasa run``'s, but Rasa's cache where the user keeps
    it (``RASA_CACHE_DIRECTORY``, else ``.rasa/cache`` in the project), so it is reused."""
    env = rasa_env(project)
    del env["RASA_CACHE_DIRECTORY"]
    if "RASA_CACHE_DIRECTORY" in os.environ:
        env["RASA_CACHE_DIRECTORY"] = os.environ["RASA_CACHE_DIRECTORY"]
    return env


def derive_archive(
    model: Path, project: Path, generate: str, options: Mapping[str, Any] | None = None
) -> Derived:
    """The archive of ``model``'s HRED under the project's config with ``generate`` (and
    ``options``) on its HREDPolicy: reused from ``<model>.bench/<generate>/`` if derived
    from the same inputs, else derived there (see the module docstring)."""
    import yaml

    from rasa_hred.integration.derive import derive_config, hred_entries

    model, project = model.resolve(), project.resolve()
    if not model.is_file():
        raise UserError(f"--model {model}: no such archive (train one with `make train`)")
    config, domain, data = _project_files(project)
    stem = next(
        (model.name[: -len(s)] for s in (".tar.gz", ".tgz", ".tar") if model.name.endswith(s)),
        model.stem,
    )
    out = model.parent / f"{stem}.bench" / generate
    archive, stamp = out / "model.tar.gz", out / "inputs.sha256"
    inputs = json.dumps({"generate": generate, "options": dict(options or {})}, sort_keys=True)
    key = _digest([model, config, domain, data], inputs)
    started = time.monotonic()
    reused = archive.is_file() and stamp.is_file() and stamp.read_text() == key
    if not reused:
        stamp.unlink(missing_ok=True)
        written = derive_config(model, config, out, generate, options)
        command = [rasa_executable(), "train", "--config", str(written)]
        command += ["--domain", str(domain), "--data", str(data), "--out", str(out)]
        command += ["--fixed-model-name", "model"]
        log_path = out / "rasa_train.log"
        with _sigterm_as_exit(), log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=project, env=_train_env(project), stdout=log, stderr=log
            )
            try:
                process.wait(timeout=TRAIN_TIMEOUT_S)
                why = f"exited with {process.returncode}"
            except subprocess.TimeoutExpired:
                why = f"did not finish within {TRAIN_TIMEOUT_S:.0f} s"
            finally:
                _stop(process)
        if process.returncode != 0 or not archive.is_file():
            raise UserError(
                f"rasa train of the {generate} archive {why} ({log_path}):\n"
                + log_path.read_text(errors="replace")[-3000:]
            )
        stamp.write_text(key)
    entry = hred_entries(yaml.safe_load((out / "config.yml").read_text(encoding="utf-8")))[0]
    policy = {k: v for k, v in entry.items() if k != "name"}
    return Derived(archive, policy, round(time.monotonic() - started, 1), reused)


def _threads(policy: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The intra-op threads a process with ``env`` generates with under ``policy``, and why."""
    if policy.get("threads"):
        return {"intra_op": policy["threads"], "source": "the policy's threads option"}
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    count = int(probe.stdout.strip()) if probe.returncode == 0 else None
    variables = [f"{name}={env[name]}" for name in THREAD_VARIABLES if env.get(name)]
    why = ", ".join(variables) if variables else f"no {'/'.join(THREAD_VARIABLES)} set"
    return {"intra_op": count, "source": f"PyTorch's default (threads: null; {why})"}


# --- the measurements -------------------------------------------------------------------------


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
        ok = reply.status_code == 200 and _has_text(reply.json())
    except (requests.RequestException, ValueError):
        return (time.perf_counter() - start) * 1000.0, False
    return elapsed, ok


def _has_text(messages: object) -> bool:
    return isinstance(messages, list) and any(
        isinstance(m, dict) and m.get("text") for m in messages
    )


def bench_sequential(
    session: Any, url: str, messages: int, warmup: int, run_id: str
) -> dict[str, Any]:
    """HRED turns and rule turns one after another, each from a fresh sender, then (untimed)
    which policy answered each (see the module docstring)."""
    lines = itertools.cycle(HRED_LINES)
    for i in range(warmup):
        _post_rest(session, url, f"warmup-{run_id}-h{i}", next(lines))
        _post_rest(session, url, f"warmup-{run_id}-r{i}", RULE_LINE)
    samples: dict[str, list[tuple[str, float, bool]]] = {"hred": [], "rule": []}
    lines = itertools.cycle(HRED_LINES)
    for i in range(messages):
        # alternate which kind goes first, so neither always follows the other
        for kind in ("hred", "rule") if i % 2 == 0 else ("rule", "hred"):
            sender = f"bench-{run_id}-{kind}-{i}"
            text = next(lines) if kind == "hred" else RULE_LINE
            samples[kind].append((sender, *_post_rest(session, url, sender, text)))
    expected = {"hred": (HRED_ACTION, HRED_POLICY), "rule": (RULE_ACTION, RULE_POLICY)}
    result: dict[str, Any] = {}
    for kind, rows in samples.items():
        verified = [
            elapsed
            for sender, elapsed, ok in rows
            if ok and answered_by(fetch_tracker(session, url, sender), *expected[kind])
        ]
        errors = sum(not ok for _, _, ok in rows)
        result[kind] = {
            **summary(verified),
            "sent": len(rows),
            "errors": errors,
            "answered_by_other_policy": len(rows) - errors - len(verified),
            "expected": f"{expected[kind][0]} by {expected[kind][1]}",
        }
    hred_p50, rule_p50 = result["hred"]["p50_ms"], result["rule"]["p50_ms"]
    added = None if hred_p50 is None or rule_p50 is None else round(hred_p50 - rule_p50, 2)
    result["hred_added_ms_p50"] = added
    return result


async def _drive(
    url: str, senders: Sequence[str], turns: int, seconds: float
) -> tuple[list[float], int, float]:
    """Each sender posts chit-chat lines one after another (the next as soon as the previous
    is answered), all senders at once, until ``turns`` each or ``seconds`` have passed:
    (round trips of the answered messages in ms, messages not answered, wall seconds)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:

        async def user(number: int, sender: str) -> None:
            nonlocal errors
            for turn in range(turns):
                if time.perf_counter() >= deadline:
                    return
                text = HRED_LINES[(number + turn) % len(HRED_LINES)]
                sent = time.perf_counter()
                try:
                    async with session.post(
                        f"{url}/webhooks/rest/webhook", json={"sender": sender, "message": text}
                    ) as reply:
                        ok = reply.status == 200 and _has_text(await reply.json())
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - sent) * 1000.0)
                else:
                    errors += 1

        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(user(i, sender) for i, sender in enumerate(senders)))
        return latencies, errors, time.perf_counter() - started


def bench_concurrent(
    session: Any, url: str, users: int, turns: int, seconds: float, run_id: str
) -> dict[str, Any]:
    """``users`` conversations at once (see the module docstring): rps and round trips."""
    senders = [f"bench-{run_id}-u{users}-{i}" for i in range(users)]
    latencies, errors, elapsed = asyncio.run(_drive(url, senders, turns, seconds))
    hred_answers = sum(
        answers_by(fetch_tracker(session, url, sender), HRED_ACTION, HRED_POLICY)
        for sender in senders
    )

    def ms(fraction: float) -> float | None:
        return round(percentile(latencies, fraction), 1) if latencies else None

    return {
        "users": users,
        "sent": len(latencies) + errors,
        "answered": len(latencies),
        "errors": errors,
        "hred_answers": hred_answers,
        "rps": round(len(latencies) / elapsed, 2) if elapsed > 0 else 0.0,
        "p50_ms": ms(0.50),
        "p95_ms": ms(0.95),
        "p99_ms": ms(0.99),
        "elapsed_s": round(elapsed, 2),
    }


def bench_mode(
    derived: Derived,
    *,
    messages: int,
    warmup: int,
    users: Sequence[int],
    turns: int,
    seconds: float,
    startup_timeout: float,
) -> dict[str, Any]:
    """One mode's figures, through ``rasa run`` with its derived archive."""
    import requests

    from rasa_hred.integration.loading import with_defaults

    run_id = uuid.uuid4().hex[:8]
    policy = with_defaults(derived.policy)
    with tempfile.TemporaryDirectory(prefix="bench-rasa-") as scratch:
        workdir = Path(scratch)
        threads = _threads(policy, rasa_env(workdir))
        started = time.monotonic()
        with rasa_run(
            derived.archive,
            "rest:\n",
            workdir,
            endpoints_yaml=ENDPOINTS_YAML,
            startup_timeout=startup_timeout,
        ) as url:
            startup_s = round(time.monotonic() - started, 1)
            with requests.Session() as session:
                in_turn = bench_sequential(session, url, messages, warmup, run_id)
                at_once = [
                    bench_concurrent(session, url, count, turns, seconds, run_id) for count in users
                ]
    return {
        "archive": str(derived.archive),
        "derive_s": derived.seconds,
        "derived": "reused" if derived.reused else "trained",
        "policy": {
            "generate": policy["generate"],
            "fallback_threshold": policy["fallback_threshold"],
            "generates_on_every_user_turn": policy["generate"] == "in_process"
            and bool(policy["fallback_threshold"]),
        },
        "threads": threads,
        "startup_s": startup_s,
        "sequential": in_turn,
        "concurrent": at_once,
        "load_avg_1m": load_average(),
    }


def in_process_generation(model: Path, runs: int, warmup: int = 3) -> dict[str, Any]:
    """Time the HRED generator of the archive ``model`` in this process, loaded as its
    HREDPolicy loads it but one context at a time, on the benchmark's contexts: the
    chit-chat lines and the rule line (one utterance each, as for a fresh sender). Run with
    the servers stopped."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import torch

    from rasa_hred.integration.archive import extract_policy_model
    from rasa_hred.integration.loading import load_policy_generator

    with tempfile.TemporaryDirectory() as scratch:
        extracted = extract_policy_model(model, scratch)
        generator = load_policy_generator(
            extracted.directory, extracted.policy_config, batching=False
        )
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
        "threads": torch.get_num_threads(),
    }


# --- the benchmark ----------------------------------------------------------------------------


def run_bench_rasa(
    model: Path,
    project: Path = Path("."),
    *,
    modes: Sequence[str] = MODES,
    messages: int = 50,
    warmup: int = 3,
    users: Sequence[int] = (1, 16),
    turns: int = 50,
    seconds: float = 20.0,
    threads: int | None = None,
    startup_timeout: float = STARTUP_TIMEOUT_S,
) -> dict[str, Any]:
    """The benchmark (see the module docstring): derive each mode's archive from ``model``
    and ``project`` (``threads`` set on the policy when given), then time each through
    ``rasa run``: ``messages`` sequential messages of each kind after ``warmup``, then
    ``users`` concurrent conversations of at most ``turns`` messages and ``seconds``."""
    if messages < 1 or warmup < 0:
        raise UserError("--messages must be at least 1 and --warmup at least 0")
    if not users or min(users) < 1 or turns < 1 or seconds <= 0:
        raise UserError("--users must be at least 1, --turns at least 1, --seconds above 0")
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise UserError(f"--modes must be among {', '.join(MODES)}, not {unknown or 'none'}")
    options = {} if threads is None else {"threads": threads}
    load_start = load_average()
    derived = {mode: derive_archive(model, project, mode, options) for mode in modes}
    result: dict[str, Any] = {
        "model": str(model.resolve()),
        "project": str(project.resolve()),
        "modes": {},
    }
    for mode, archive in derived.items():
        figures = bench_mode(
            archive,
            messages=messages,
            warmup=warmup,
            users=users,
            turns=turns,
            seconds=seconds,
            startup_timeout=startup_timeout,
        )
        if figures["sequential"]["hred"]["n"] == 0:
            raise UserError(
                f"{mode}: no chit-chat message was answered by HREDPolicy's utter_hred; is "
                f"{project / 'config.yml'} using rasa_hred.HREDPolicy?"
            )
        result["modes"][mode] = figures
    generation = in_process_generation(next(iter(derived.values())).archive, messages, warmup)
    result.update(
        in_process_generate=generation,
        device=generation["device"],
        load_avg_1m_at_start=load_start,
        load_avg_1m=load_average(),
        cpu_count=os.cpu_count(),
    )
    return result
