"""Model directories: ``config.json`` + ``vocab.json`` + ``model.safetensors``.

Weights are stored with safetensors and training state with ``torch.save`` of plain tensors,
read back with ``weights_only=True``: loading a model never unpickles code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors._safetensors_rust import SafetensorError  # missing from safetensors' stubs
from safetensors.torch import load_file, save_file

from rasa_hred.core.model import HRED, HREDConfig
from rasa_hred.core.vocab import Vocabulary
from rasa_hred.errors import UserError

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "rasa-hred-model"


class CheckpointError(UserError):
    """A model directory or checkpoint that is missing, corrupt or not ours."""


@dataclass
class LoadedModel:
    model: HRED
    vocabulary: Vocabulary
    extra: dict[str, Any]  # the rest of config.json (training settings, decoding defaults)
    path: Path


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU here")
    return resolved


def save_model(
    directory: str | Path, model: HRED, vocabulary: Vocabulary, extra: dict[str, Any] | None = None
) -> Path:
    """Write the three files of a model directory (tied weights are stored once)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in model.state_dict().items()
        if not (model.config.tie_embeddings and name == "output.weight")
    }
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    vocabulary.save(directory / VOCAB_FILE)
    document = {"format": FORMAT, "version": 1, "model": model.config.to_dict(), **(extra or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: no such model directory")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise CheckpointError(f"{path}: missing; is {directory} a rasa-hred model?") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a rasa-hred model config")
    return document


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model directory onto ``device`` in eval mode; every failure is a CheckpointError."""
    directory = Path(directory)
    document = read_config(directory)
    try:
        config = HREDConfig.from_dict(document["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{directory / CONFIG_FILE}: bad model section ({error})") from error
    vocabulary = Vocabulary.load(directory / VOCAB_FILE)
    if len(vocabulary) != config.vocab_size:
        raise CheckpointError(
            f"{directory}: vocabulary has {len(vocabulary)} tokens, the model expects "
            f"{config.vocab_size}"
        )
    model = HRED(config)
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except FileNotFoundError as error:
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: missing") from error
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: unreadable ({error})") from error
    load_state(model, state, str(directory / WEIGHTS_FILE))
    model.to(resolve_device(device)).eval()
    extra = {k: v for k, v in document.items() if k not in ("format", "version", "model")}
    return LoadedModel(model, vocabulary, extra, directory)


def load_state(model: HRED, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that names what does not fit instead of a bare RuntimeError."""
    if model.config.tie_embeddings:
        state = {k: v for k, v in state.items() if k != "output.weight"}
        state["output.weight"] = state.get("embedding.weight", torch.empty(0))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source}: weights do not fit the model config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]})"
        )
    model.load_state_dict(state)
