"""Hostile clients against a real NLG server process on 127.0.0.1: slow-loris (headers or
body trickled), a body that announces more than it sends, a thousand idle connections. Each
attack is bounded in connections, bytes and time; each must end in a timeout or an answer,
never a hang, while another client's requests keep being answered (its p99 latency during
the attack is printed beside the one without, and only a generous bound is asserted).

The server runs with short timeouts (``REQUEST_TIMEOUT`` 2 s, ``KEEP_ALIVE_TIMEOUT`` 2 s)
so that the attacks take seconds; the defaults are ``rasa_hred.nlg_server.defaults``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from support.nlg import ServerProcess, nlg_server_process

pytestmark = pytest.mark.slow

TOKEN = "hostile-test-token"
REQUEST_TIMEOUT = 2.0
KEEP_ALIVE_TIMEOUT = 2.0
GOOD_REQUESTS = 30
# What a well-behaved client asks: an HRED reply to a short conversation.
GOOD_BODY = json.dumps(
    {
        "response": "utter_hred",
        "tracker": {
            "events": [
                {"event": "user", "text": "hi there"},
                {"event": "bot", "text": "hello! seen any good films?"},
                {"event": "user", "text": "i liked the one with the shark"},
            ]
        },
        "channel": {"name": "rest"},
    }
).encode()


@pytest.fixture(scope="module")
def server(tiny_hred: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with nlg_server_process(
        tiny_hred,
        log,
        token=TOKEN,
        request_timeout=REQUEST_TIMEOUT,
        response_timeout=10.0,
        keep_alive_timeout=KEEP_ALIVE_TIMEOUT,
    ) as running:
        yield running


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


# The other client runs in a process of its own, so that the attack's own work in this
# process does not slow it down: what it measures is the server.
_GOOD_CLIENT = """
import http.client, json, sys, time
host, port, path, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
body = sys.stdin.buffer.read()
latencies = []
for _ in range(count):
    started = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("POST", path, body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200 and isinstance(answer["text"], str), (response.status, answer)
    connection.close()
    latencies.append(time.perf_counter() - started)
print(json.dumps(latencies))
"""


async def good_client(url: str, count: int = GOOD_REQUESTS) -> list[float]:
    """``count`` HRED requests one after the other, each on a new connection (as clients
    arriving during an attack open them); their latencies. Each must be answered 200."""
    host, port = url.removeprefix("http://").split(":")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _GOOD_CLIENT,
        host,
        port,
        f"/nlg?token={TOKEN}",
        str(count),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(GOOD_BODY), 120)
    assert process.returncode == 0
    return [float(seconds) for seconds in json.loads(out)]


@pytest.fixture(scope="module")
def baseline(server: ServerProcess) -> float:
    asyncio.run(good_client(server.url, 5))  # warm up
    return p99(asyncio.run(good_client(server.url)))


async def open_raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def until_answered_or_closed(reader: asyncio.StreamReader, limit: float) -> bytes:
    """What the server sends before it closes the connection (b"" if it just closes,
    b"reset" if it resets it); raises ``TimeoutError`` if it does neither within ``limit``
    seconds."""
    try:
        return await asyncio.wait_for(reader.read(), limit)
    except ConnectionResetError:  # closed with bytes of ours unread: the kernel resets
        return b"reset"


async def attack_and_measure(
    url: str, attack: Callable[[], Awaitable[list[tuple[float, bytes]]]]
) -> tuple[list[tuple[float, bytes]], float]:
    """Runs ``attack`` and the good client at once; the attack's outcomes (seconds to the
    end of each connection, what the server said) and the good client's p99."""
    outcomes, latencies = await asyncio.gather(attack(), good_client(url))
    return outcomes, p99(latencies)


def report(name: str, baseline: float, during: float, outcomes: list[tuple[float, bytes]]) -> None:
    ended = max(seconds for seconds, _ in outcomes)
    counts = Counter(said.split(b"\r\n", 1)[0].decode() or "closed" for _, said in outcomes)
    statuses = sorted(f"{n} {status}" for status, n in counts.items())
    print(
        f"\n{name}: {len(outcomes)} attackers ended within {ended:.1f} s ({', '.join(statuses)});"
        f" other client p99 {baseline * 1000:.0f} ms alone, {during * 1000:.0f} ms during"
    )
    assert during < 5 * baseline + 0.5  # a generous bound: the bar (2x) is for the report


def trickle(url: str, head: bytes, trickled: bytes, count: int, every: float):
    """An attack: ``count`` connections that send ``head`` then one byte of ``trickled``
    every ``every`` seconds, until the server answers or closes (bounded by the bytes)."""

    async def one() -> tuple[float, bytes]:
        reader, writer = await open_raw(url)
        started = time.monotonic()
        writer.write(head)
        answer = asyncio.ensure_future(until_answered_or_closed(reader, 60))
        try:
            for byte in trickled:
                await asyncio.wait([answer], timeout=every)
                if answer.done():
                    break
                writer.write(bytes([byte]))
            said = await answer
        finally:
            writer.close()
        return time.monotonic() - started, said

    async def attack() -> list[tuple[float, bytes]]:
        return await asyncio.gather(*(one() for _ in range(count)))

    return attack


def test_slow_loris_headers_time_out(server: ServerProcess, baseline: float) -> None:
    head = b"POST /nlg HTTP/1.1\r\nHost: x\r\n"
    attack = trickle(server.url, head, b"X-Slow: " + b"a" * 200, count=100, every=0.2)
    outcomes, during = asyncio.run(attack_and_measure(server.url, attack))
    # Each byte came well within the timeout; the whole head did not.
    assert all(seconds < REQUEST_TIMEOUT + 3 for seconds, _ in outcomes)
    assert all(said in (b"", b"reset") or said.startswith(b"HTTP/1.1 408") for _, said in outcomes)
    report("slow-loris headers", baseline, during, outcomes)


def test_slow_loris_body_times_out_with_408(server: ServerProcess, baseline: float) -> None:
    head = f"POST /nlg?token={TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n".encode()
    attack = trickle(server.url, head, b" " * 200, count=100, every=0.2)
    outcomes, during = asyncio.run(attack_and_measure(server.url, attack))
    assert all(seconds < REQUEST_TIMEOUT + 3 for seconds, _ in outcomes)
    answered = [said for _, said in outcomes if said != b"reset"]
    assert all(said.startswith(b"HTTP/1.1 408") and b'"error"' in said for said in answered)
    report("slow-loris body", baseline, during, outcomes)


def test_a_body_that_announces_more_than_it_sends_is_answered(
    server: ServerProcess, baseline: float
) -> None:
    async def attack() -> list[tuple[float, bytes]]:
        async def one() -> tuple[float, bytes]:
            reader, writer = await open_raw(server.url)
            started = time.monotonic()
            writer.write(
                f"POST /nlg?token={TOKEN} HTTP/1.1\r\nHost: x\r\n"
                "Content-Length: 100000\r\n\r\n".encode()
                + GOOD_BODY
            )
            try:
                said = await until_answered_or_closed(reader, 30)
            finally:
                writer.close()
            return time.monotonic() - started, said

        return await asyncio.gather(*(one() for _ in range(50)))

    outcomes, during = asyncio.run(attack_and_measure(server.url, attack))
    assert all(seconds < REQUEST_TIMEOUT + 3 for seconds, _ in outcomes)
    assert all(said.startswith(b"HTTP/1.1 408") for _, said in outcomes)
    report("short body", baseline, during, outcomes)


def test_a_thousand_idle_connections_are_closed(server: ServerProcess, baseline: float) -> None:
    async def attack() -> list[tuple[float, bytes]]:
        async def one() -> tuple[float, bytes]:
            started = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(open_raw(server.url), 10)
            except (OSError, asyncio.TimeoutError):
                return time.monotonic() - started, b"refused"
            try:
                said = await until_answered_or_closed(reader, 30)
            finally:
                writer.close()
            return time.monotonic() - started, said

        return await asyncio.gather(*(one() for _ in range(1000)))

    outcomes, during = asyncio.run(attack_and_measure(server.url, attack))
    assert len(outcomes) == 1000
    assert all(said in (b"", b"refused") for _, said in outcomes)
    assert max(seconds for seconds, _ in outcomes) < KEEP_ALIVE_TIMEOUT + 10
    report("1,000 idle connections", baseline, during, outcomes)


def test_the_access_log_has_lines_without_the_token(server: ServerProcess) -> None:
    asyncio.run(good_client(server.url, 2))
    lines = [line for line in server.log_text().splitlines() if "sanic.access" in line]
    nlg_lines = [line for line in lines if '"POST ' in line and "/nlg" in line]
    assert nlg_lines, lines[-5:]
    assert all("token=<hidden>" in line and " 200 " in line for line in nlg_lines[-2:])
    assert TOKEN not in server.log_text()
    assert "Traceback" not in server.log_text()
