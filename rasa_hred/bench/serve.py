"""``rasa-hred bench serve``: the NLG server under concurrent clients, batching on and off.

The server is ``rasa-hred serve`` in a subprocess with an untrained HRED at the seed's
configuration (``rasa_hred.bench.generate.seed_model``: vocabulary 10,004, embeddings and
hidden 300, unidirectional, maxout), beam 5 and every reply exactly 20 tokens
(``force_length``), so all requests cost the same. Each request is a distinct conversation
of two 16-20 word turns.
This process drives it with aiohttp: N clients, each sending its next request as soon as
the previous one is answered, for ``--seconds`` (and at most ``MAX_REQUESTS_PER_RUN``
requests); then it waits for the requests still in flight. Per run it reports ``rps``
(answered requests per second), latency percentiles, ``errors`` (non-200 answers, answers
without a text, failed or timed-out requests), ``mean_batch`` (contexts per decoded batch,
from the server's /health) and ``peak_rss_mb`` (the server's VmHWM so far).
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

from rasa_hred.bench.common import free_port, percentile
from rasa_hred.bench.generate import VOCAB_SIZE, seed_model
from rasa_hred.errors import UserError
from rasa_hred.integration.names import RESPONSE, SLOT

STEPS = 20
MAX_REQUESTS_PER_RUN = 200_000
REQUEST_TIMEOUT_S = 120.0
STARTUP_TIMEOUT_S = 180.0
CONVERSATIONS = 1024
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
) -> list[dict[str, Any]]:
    """One row of figures per client count and batching mode (``modes``: True = batching
    on; default both); with ``progress`` each row is also printed to stderr as it comes."""
    clients = clients or [1, 8, 32, 128]
    if any(n < 1 for n in clients) or seconds <= 0:
        raise UserError("--clients must be >= 1 and --seconds > 0")
    modes = [True, False] if modes is None else modes
    rows = []
    bodies = request_bodies(CONVERSATIONS)
    with tempfile.TemporaryDirectory(prefix="rasa-hred-bench-serve-") as scratch:
        root = Path(scratch)
        model = build_seed_model(root / "model")
        domain = root / "domain.yml"
        domain.write_text(DOMAIN_YAML, encoding="utf-8")
        for batching in modes:
            options = [
                "--device",
                device,
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
            server = Server(model, domain, root / f"server-{batching}.log", options)
            try:
                asyncio.run(drive(server.url, bodies, 2, min(3.0, seconds)))  # warm-up
                for count in clients:
                    before = server.health()["batching"]["stats"]
                    figures = asyncio.run(drive(server.url, bodies, count, seconds))
                    health = server.health()
                    after = health["batching"]["stats"]
                    batches = after["batches"] - before["batches"]
                    row = {
                        "clients": count,
                        "batching": batching,
                        "rps": figures["rps"],
                        "p50_ms": figures["p50_ms"],
                        "p95_ms": figures["p95_ms"],
                        "p99_ms": figures["p99_ms"],
                        "errors": figures["errors"],
                        "peak_rss_mb": peak_rss_mb(server.process.pid),
                        "requests": figures["requests"],
                        "mean_batch": round((after["requests"] - before["requests"]) / batches, 2)
                        if batches
                        else 0.0,
                        "seconds": figures["elapsed_s"],
                        "device": health["device"],
                        "beam_size": beam_size,
                    }
                    rows.append(row)
                    if progress:
                        print(json.dumps(row), file=sys.stderr, flush=True)
            finally:
                server.stop()
    return rows
