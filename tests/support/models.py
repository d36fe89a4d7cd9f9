"""Trained things for tests: a tiny HRED, and the demo assistant trained by ``rasa train``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock

from support import BIN, RASA_ENV, REPO


def train_tiny_hred(out: Path) -> Path:
    """A small HRED (32-wide embeddings, 64-wide GRUs) trained on CPU for three epochs on the
    bundled chatterbot corpus, saved to ``out``: enough to answer, seconds to train."""
    from rasa_hred.core.training import TrainingConfig
    from rasa_hred.jobs import train_on_corpus

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
    train_on_corpus(config)
    return out


#: The demo's DIETClassifier in tests: fewer epochs, a fixed seed (tests/test_demo_nlu.py
#: checks the NLU trained so on held-out phrasings).
DEMO_DIET = {"epochs": 50, "random_seed": 1}


def demo_policy_options(*names: str) -> dict[str, Any]:
    """The options ``names`` of the HREDPolicy in the repository's config.yml (those it sets)."""
    config = yaml.safe_load((REPO / "config.yml").read_text())
    (policy,) = [p for p in config["policies"] if p["name"] == "rasa_hred.HREDPolicy"]
    return {name: policy[name] for name in names if name in policy}


def demo_run_directory(target: Path) -> list[str]:
    """``target`` laid out like the repository root for ``rasa run``: its endpoints.yml (the
    in-process NLG, the SQLite store under models/) and credentials.yml; the options that
    name them."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("endpoints.yml", "credentials.yml"):
        shutil.copy(REPO / name, target / name)
    (target / "models").mkdir(exist_ok=True)
    return ["--endpoints", "endpoints.yml", "--credentials", "credentials.yml"]


def write_demo_project(target: Path, hred: dict[str, Any]) -> Path:
    """The repository's demo assistant with a fast NLU and the given HREDPolicy options."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("domain.yml", "endpoints.yml", "credentials.yml"):
        shutil.copy(REPO / name, target / name)
    shutil.copytree(REPO / "data", target / "data", dirs_exist_ok=True)
    config = yaml.safe_load((REPO / "config.yml").read_text())
    for component in config["pipeline"]:
        if component["name"] == "DIETClassifier":
            component.update(DEMO_DIET)
    policies = [p for p in config["policies"] if p["name"] != "rasa_hred.HREDPolicy"]
    policies.append({"name": "rasa_hred.HREDPolicy", **hred})
    config["policies"] = policies
    (target / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def rasa_train(project: Path, timeout: float = 600, cache: Path | None = None) -> Path:
    """``rasa train`` in ``project`` (a subprocess); the model archive's path. Projects share
    one Rasa cache (``cache``, else ``rasa-cache`` beside the project), so a component whose
    config and data another project already trained is restored, not trained again; one
    training at a time uses a cache (test processes run side by side under pytest-xdist)."""
    cache = cache or project.parent / "rasa-cache"
    with FileLock(f"{cache}.lock"):
        run = subprocess.run(
            [BIN / "rasa", "train", "--fixed-model-name", "demo", "--out", "models"],
            cwd=project,
            env=RASA_ENV | {"RASA_CACHE_DIRECTORY": str(cache)},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return project / "models" / "demo.tar.gz"
