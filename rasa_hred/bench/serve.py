"""``rasa-hred bench serve``: the NLG server under concurrent clients, batching on and off.

The server is ``rasa-hred serve`` in a subprocess with an untrained HRED at the seed's
configuration (``rasa_hred.bench.generate.seed_model``: vocabulary 10,004, embeddings and
hidden 300, unidirectional, maxout), beam 5 and every reply exactly 20 tokens
(``force_length``), so all requests cost the same. Each request is a distinct conversation
of two 16-20 word turns. One server per mode: batching on runs with ``--batching --dtype
auto``, batching off with ``--no-batching --dtype float32`` (``MODE_DTYPES``), so that
``speedup_32`` is what batching and the auto dtype together gain.
This process drives it with aiohttp: N clients, each sending its next request as soon as
the previous one is answered, for ``--seconds`` (and at most ``MAX_REQUESTS_PER_RUN``
requests); then it waits for the requests still in flight. The result is one JSON object:

- ``device``, ``beam_size``, ``steps``, ``max_batch_size``, ``batch_wait_ms``, ``threads``
  (the server's; ``None``: PyTorch's choice), ``seconds`` (asked per run);
  ``auto_dtype``: what ``auto`` resolved to on this machine (``rasa_hred.core.precision``);
- ``runs``: per batching mode and client count, ``clients``, ``batching``, ``dtype`` (the
  server's, resolved), ``rps`` (answered requests per second), ``p50_ms`` / ``p95_ms`` /
  ``p99_ms`` (latency of the answered requests), ``errors`` (non-200 answers, answers
  without a text, failed or timed-out requests), ``mean_batch`` (contexts per decoded
  batch, from the server's /health), ``peak_rss_mb`` (the server's VmHWM so far),
  ``requests`` (answered and failed) and ``seconds`` (the run's wall time, in-flight
  requests included);
- ``speedup_32``: ``rps`` with batching on over ``rps`` with it off, both at 32 clients
  (of the printed figures; ``None`` unless both runs were made);
- ``load_avg_1m_at_start`` / ``load_avg_1m``: the 1-minute load average before and after
  (other processes on the machine distort CPU figures).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rasa_hred.bench.common import free_port, load_average, percentile
from rasa_hred.bench.generate import VOCAB_SIZE, seed_model
from rasa_hred.errors import UserError
from rasa_hred.integration.names import RESPONSE, SLOT

STEPS = 20
MAX_REQUESTS_PER_RUN = 200_000
REQUEST_TIMEOUT_S = 120.0
STARTUP_TIMEOUT_S = 180.0
CONVERSATIONS = 1024
SPEEDUP_CLIENTS = 32  # speedup_32
MODE_DTYPES = {True: "auto", False: "float32"}  # batching on / off -> the server's --dtype
DOMAIN_YAML = f"""version: "3.1"
slots:
  {SLOT}:
    type: text
    influence_conversation: false
    mappings:
      - type: custom
responses:
  {RESPONSE}:
    - text: "{{{SLOT}}}"
"""


def synthetic_words(count: int) -> list[str]:
    """``count`` distinct lowercase words that the tokenizer keeps whole."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = []
    for number in range(count):
        word = ""
        number += 26 * 26  # at least three letters
        while number:
            number, digit = divmod(number, 26)
            word = letters[digit] + word
        words.append(word)
    return words


def build_seed_model(directory: Path) -> Path:
    """An untrained seed-sized model directory (beam 5, replies of exactly 20 tokens)."""
    import torch

    from rasa_hred.core.checkpoint import save_model
    from rasa_hred.core.vocab import SPECIAL_TOKENS, Vocabulary

    model = seed_model(torch.device("cpu"))
    vocabulary = Vocabulary([*SPECIAL_TOKENS, *synthetic_words(VOCAB_SIZE - len(SPECIAL_TOKENS))])
    assert len(vocabulary) == VOCAB_SIZE
    save_model(directory, model, vocabulary, {"decoding": {"beam_size": 5, "force_length": STEPS}})
    return directory


def request_bodies(count: int, seed: int = 0) -> list[bytes]:
    """``count`` NLG requests for the HRED's response, each with its own two-turn conversation."""
    rng = random.Random(seed)
    words = synthetic_words(VOCAB_SIZE - 7)

    def sentence() -> str:
        return " ".join(rng.choices(words, k=rng.randint(16, 20)))

    bodies = []
    for _ in range(count):
        events = [
            {"event": "action", "name": "action_listen"},
            {"event": "user", "text": sentence()},
            {"event": "bot", "text": sentence()},
            {"event": "action", "name": "action_listen"},
            {"event": "user", "text": sentence()},
        ]
        body = {
            "response": RESPONSE,
            "id": None,
            "arguments": {},
            "tracker": {"sender_id": "bench", "slots": {}, "events": events},
            "channel": {"name": "rest"},
        }
        bodies.append(json.dumps(body).encode())
    return bodies


def _get_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


class Server:
    """``rasa-hred serve`` as a subprocess on a free loopback port."""

    def __init__(self, model: Path, domain: Path, log: Path, options: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        command = [
            sys.executable,
            "-m",
            "rasa_hred.cli",
            "serve",
            "--model",
            str(model),
            "--domain",
            str(domain),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *options,
        ]
        env = os.environ | {"RASA_TELEMETRY_ENABLED": "false", "TF_CPP_MIN_LOG_LEVEL": "3"}
        self._log = log.open("w")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise UserError(f"the server exited: {self.log_tail()}")
            try:
                _get_json(f"{self.url}/health", timeout=2.0)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise UserError(f"the server did not start in {STARTUP_TIMEOUT_S:.0f} s")
            time.sleep(0.25)

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def health(self) -> dict[str, Any]:
        return _get_json(f"{self.url}/health")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


async def drive(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` concurrent clients for ``seconds``: rps, latency percentiles, errors."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    issued = 0
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(number: int) -> None:
            nonlocal errors, issued
            while time.perf_counter() < deadline and issued < MAX_REQUESTS_PER_RUN:
                body = bodies[(issued * 7919 + number) % len(bodies)]
                issued += 1
                sent = time.perf_counter()
                try:
                    async with session.post(f"{url}/nlg", data=body, headers=headers) as r:
                        answer = await r.json(content_type=None)
                        ok = r.status == 200 and isinstance(answer, dict)
                        ok = ok and isinstance(answer.get("text"), str) and answer["text"] != ""
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - sent) * 1000.0)
                else:
                    errors += 1

        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.wait_for(
            asyncio.gather(*(client(i) for i in range(clients))),
            timeout=seconds + REQUEST_TIMEOUT_S + 30.0,
        )
        elapsed = time.perf_counter() - started
    answered = len(latencies)
    return {
        "requests": answered + errors,
        "rps": round(answered / elapsed, 2) if elapsed > 0 else 0.0,
        "p50_ms": round(percentile(latencies, 0.50), 1) if latencies else None,
        "p95_ms": round(percentile(latencies, 0.95), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
        "errors": errors,
        "elapsed_s": round(elapsed, 2),
    }


def server_options(
    batching: bool,
    *,
    device: str,
    beam_size: int,
    max_batch_size: int,
    batch_wait_ms: float,
    threads: int | None,
) -> list[str]:
    """The ``rasa-hred serve`` flags of one batching mode (its dtype from ``MODE_DTYPES``)."""
    options = [
        "--device",
        device,
        "--dtype",
        MODE_DTYPES[batching],
        "--beam-size",
        str(beam_size),
        "--max-batch-size",
        str(max_batch_size),
        "--batch-wait-ms",
        str(batch_wait_ms),
        "--batching" if batching else "--no-batching",
    ]
    if threads:
        options += ["--threads", str(threads)]
    return options


def speedup(rows: list[dict[str, Any]], clients: int) -> float | None:
    """``rps`` with batching on over ``rps`` with it off at ``clients`` clients (``None``
    unless both runs are in ``rows`` and the second answered something)."""
    rps = {row["batching"]: row["rps"] for row in rows if row["clients"] == clients}
    if True not in rps or not rps.get(False):
        return None
    return round(rps[True] / rps[False], 2)


def run(
    *,
    device: str = "auto",
    seconds: float = 20.0,
    clients: list[int] | None = None,
    modes: list[bool] | None = None,
    beam_size: int = 5,
    max_batch_size: int = 32,
    batch_wait_ms: float = 0.0,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The figures of every client count and batching mode (``modes``: True = batching on;
    default both) as one JSON-ready object (see the module docstring); with ``progress``
    each run's row is also printed to stderr as it comes."""
    from rasa_hred.core.checkpoint import resolve_device
    from rasa_hred.core.precision import resolve_dtype

    clients = clients or [1, 8, 32, 128]
    if any(n < 1 for n in clients) or seconds <= 0:
        raise UserError("--clients must be >= 1 and --seconds > 0")
    modes = [True, False] if modes is None else modes
    load_start = load_average()
    resolved = resolve_device(device)  # as the server resolves it, on the same machine

    def dtype_name(name: str) -> str:
        return str(resolve_dtype(name, resolved)).removeprefix("torch.")

    rows = []
    bodies = request_bodies(CONVERSATIONS)
    with tempfile.TemporaryDirectory(prefix="rasa-hred-bench-serve-") as scratch:
        root = Path(scratch)
        model = build_seed_model(root / "model")
        domain = root / "domain.yml"
        domain.write_text(DOMAIN_YAML, encoding="utf-8")
        for batching in modes:
            options = server_options(
                batching,
                device=device,
                beam_size=beam_size,
                max_batch_size=max_batch_size,
                batch_wait_ms=batch_wait_ms,
                threads=threads,
            )
            server = Server(model, domain, root / f"server-{batching}.log", options)
            try:
                asyncio.run(drive(server.url, bodies, 2, min(3.0, seconds)))  # warm-up
                for count in clients:
                    before = server.health()["batching"]["stats"]
                    figures = asyncio.run(drive(server.url, bodies, count, seconds))
                    after = server.health()["batching"]["stats"]
                    batches = after["batches"] - before["batches"]
                    row = {
                        "clients": count,
                        "batching": batching,
                        "dtype": dtype_name(MODE_DTYPES[batching]),
                        "rps": figures["rps"],
                        "p50_ms": figures["p50_ms"],
                        "p95_ms": figures["p95_ms"],
                        "p99_ms": figures["p99_ms"],
                        "errors": figures["errors"],
                        "mean_batch": round((after["requests"] - before["requests"]) / batches, 2)
                        if batches
                        else 0.0,
                        "peak_rss_mb": peak_rss_mb(server.process.pid),
                        "requests": figures["requests"],
                        "seconds": figures["elapsed_s"],
                    }
                    rows.append(row)
                    if progress:
                        print(json.dumps(row), file=sys.stderr, flush=True)
            finally:
                server.stop()
    return {
        "device": str(resolved),
        "auto_dtype": dtype_name("auto"),
        "beam_size": beam_size,
        "steps": STEPS,
        "max_batch_size": max_batch_size,
        "batch_wait_ms": batch_wait_ms,
        "threads": threads,
        "seconds": seconds,
        "runs": rows,
        "speedup_32": speedup(rows, SPEEDUP_CLIENTS),
        "load_avg_1m_at_start": load_start,
        "load_avg_1m": load_average(),
    }
