"""Servers for tests, each on a free loopback port and stopped afterwards whatever happens."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from support import BIN, RASA_ENV


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[str]:
    """Serve the Sanic ``app`` on a free loopback port in this event loop; yields its base
    URL."""
    from sanic import Sanic

    Sanic.test_mode = True  # several apps per process (Sanic's touch-up stays repeatable)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = await app.create_server(sock=sock, return_asyncio_server=True, access_log=False)
    await server.startup()
    await server.before_start()
    await server.after_start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.before_stop()
        for connection in list(server.connections):
            connection.close_if_idle()
        server.close()
        await server.wait_closed()
        await server.after_stop()
        sock.close()


def stop_process(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL if ``process`` is still there after ``timeout`` seconds; reaped."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


@contextlib.contextmanager
def rasa_server(model: Path, cwd: Path, *extra: str, startup_timeout: float = 180) -> Iterator[str]:
    """`rasa run` on a free loopback port; yields its base URL and stops it afterwards.
    Its log is ``cwd/rasa-<port>.log``."""
    port = free_port()
    log = (cwd / f"rasa-{port}.log").open("w")
    process = subprocess.Popen(
        [BIN / "rasa", "run", "-m", model, "-i", "127.0.0.1", "-p", str(port), *extra],
        cwd=cwd,
        env=RASA_ENV,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"rasa run exited: {(cwd / log.name).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("rasa run did not start in time")
            time.sleep(0.5)
        yield url
    finally:
        stop_process(process, timeout=30)
        log.close()
