"""Shared fixtures: a small trained HRED, the demo assistant trained with it, `rasa run`.

Everything is real: `rasa train` and `rasa run` run as subprocesses of the installed CLI and
servers bind to 127.0.0.1 on free ports. The trained pieces are session-scoped because
training is the slow part.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RASA_ENV = os.environ | {
    "RASA_TELEMETRY_ENABLED": "false",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "PYTHONWARNINGS": "ignore",
    "SQLALCHEMY_SILENCE_UBER_WARNING": "1",
}
os.environ.update({k: v for k, v in RASA_ENV.items() if k != "PYTHONWARNINGS"})


def pytest_collection_modifyitems(config: Any, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy 2-core box a second thread makes
    every small op wait for a free core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_hred(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small HRED trained for a few epochs on the bundled chatterbot corpus."""
    from rasa_hred.core.training import TrainingConfig, train_model

    out = tmp_path_factory.mktemp("hred") / "model"
    config = TrainingConfig(
        corpus=["chatterbot:english"],
        out=str(out),
        embedding_size=32,
        hidden_size=64,
        epochs=3,
        batch_size=32,
        lr=5e-3,
        device="cpu",
        progress=False,
    )
    train_model(config)
    return out


def write_demo_project(target: Path, hred: dict[str, Any]) -> Path:
    """The repository's demo assistant with a fast NLU and the given HREDPolicy options."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("domain.yml", "endpoints.yml", "credentials.yml"):
        shutil.copy(REPO / name, target / name)
    shutil.copytree(REPO / "data", target / "data", dirs_exist_ok=True)
    config = yaml.safe_load((REPO / "config.yml").read_text())
    for component in config["pipeline"]:
        if component["name"] == "DIETClassifier":
            component["epochs"] = 40
    policies = [p for p in config["policies"] if p["name"] != "rasa_hred.HREDPolicy"]
    policies.append({"name": "rasa_hred.HREDPolicy", **hred})
    config["policies"] = policies
    (target / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def rasa_train(project: Path, timeout: float = 600) -> Path:
    run = subprocess.run(
        [BIN / "rasa", "train", "--fixed-model-name", "demo", "--out", "models"],
        cwd=project,
        env=RASA_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return project / "models" / "demo.tar.gz"


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory, tiny_hred: Path) -> Path:
    """The demo assistant trained by `rasa train` with the small pre-trained HRED."""
    project = write_demo_project(
        tmp_path_factory.mktemp("demo"), {"model": str(tiny_hred), "max_history": 6}
    )
    return rasa_train(project)


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port in this event loop; yields its base URL."""
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


@contextlib.contextmanager
def rasa_server(model: Path, cwd: Path, *extra: str, startup_timeout: float = 180) -> Iterator[str]:
    """`rasa run` on a free loopback port; yields its base URL and stops it afterwards."""
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
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
