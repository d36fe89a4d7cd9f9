"""Helpers for the hostile-input tests: small model directories to tamper with, and a fresh
interpreter that measures what one call costs (time, peak memory) and how it failed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from support import REPO

WORDS = ["hello", "hi", "how", "are", "you", "fine", "thanks", "good", "what", "is", "your"]
WORDS += ["name", "my", "the", "dog", "yes", "no", "ok"]


def small_model_dir(directory: Path, **model: Any) -> Path:
    """An untrained HRED with 16-wide layers (``model`` overrides config fields), saved as a
    model directory: valid files a test then makes hostile."""
    import torch

    from rasa_hred.core.checkpoint import save_model
    from rasa_hred.core.model import HRED, HREDConfig
    from rasa_hred.core.vocab import Vocabulary

    vocabulary = Vocabulary.build([WORDS])
    sizes = dict(embedding_size=16, utterance_hidden=16, context_hidden=16, decoder_hidden=16)
    torch.manual_seed(0)
    config = HREDConfig(vocab_size=len(vocabulary), **(sizes | model))
    return save_model(directory, HRED(config), vocabulary)


def set_model_config(directory: Path, **fields: Any) -> Path:
    """Change fields of ``config.json``'s model section as a hostile file would (no checks)."""
    path = directory / "config.json"
    document = json.loads(path.read_text())
    document["model"] |= fields
    path.write_text(json.dumps(document))
    return directory


_RUNNER = """
import importlib, json, resource, sys, time
module, function, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
call = getattr(importlib.import_module(module), function)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
error = None
try:
    call(*args)
except Exception as caught:
    kinds = [kind.__name__ for kind in type(caught).__mro__]
    error = {"types": kinds, "message": str(caught)}
seconds = time.perf_counter() - start
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"seconds": seconds, "peak_growth_mb": grown / 1024, "error": error}))
"""


def cost_of(module: str, function: str, *args: Any, timeout: float = 120) -> dict[str, Any]:
    """Call ``module.function(*args)`` (JSON arguments) in a fresh interpreter, its imports
    done first: ``seconds`` it took, ``peak_growth_mb`` (how far the process's peak resident
    memory rose), and ``error`` (``types``: the exception's classes, ``message``) or None.
    ``timeout`` is a hang guard."""
    run = subprocess.run(
        [sys.executable, "-c", _RUNNER, module, function, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return result
