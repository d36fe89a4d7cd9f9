"""The NLG server in a process of its own, for tests that attack it or measure it: what the
server process costs (its peak RSS) and what its clients see stay apart from the test's own
work.

It is ``create_app`` run with ``app.run`` as ``rasa-hred serve`` runs it, with settings the
command line does not offer (short timeouts, so that a slow-loris test takes seconds).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support import RASA_ENV, REPO
from support.servers import free_port

_SERVE = """
import json, logging, sys
import torch
from rasa_hred.nlg_server.app import create_app
from rasa_hred.serving.generator import ResponseGenerator

settings = json.loads(sys.argv[1])
logging.basicConfig(
    level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
torch.set_num_threads(1)
generator = ResponseGenerator.load(settings.pop("model"), device="cpu")
port = settings.pop("port")
app = create_app(generator, settings.pop("domain"), **settings)
app.run(host="127.0.0.1", port=port, access_log=True, motd=False)
"""


@dataclass
class ServerProcess:
    """A running NLG server: its base URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory so far (``VmHWM``), in MB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def nlg_server_process(
    model: Path, log: Path, startup_timeout: float = 180, **settings: Any
) -> Iterator[ServerProcess]:
    """The NLG server for ``model`` and the demo domain in a subprocess on a free loopback
    port, with ``create_app``'s keyword ``settings``; stopped (SIGTERM) afterwards."""
    port = free_port()
    arguments = {"model": str(model), "domain": str(REPO / "domain.yml"), "port": port}
    out = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVE, json.dumps(arguments | settings)],
        env=RASA_ENV,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the NLG server exited: {server.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{server.url}/health", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the NLG server did not start in time")
            time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        out.close()
