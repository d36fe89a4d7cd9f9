"""Model directories: ``config.json`` + ``vocab.json`` + ``model.safetensors``.

Weights are stored with safetensors and training state with ``torch.save`` of plain tensors,
read back with ``weights_only=True``: loading a model never unpickles code. A model directory
is untrusted input: every file is read within a stated bound, the config is validated
(``HREDConfig``) and the weights' shapes are compared with it from the safetensors header
before the model is built, and every failure is a ``CheckpointError`` naming the file.
"""

from __future__ import annotations

import json
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors._safetensors_rust import SafetensorError  # missing from safetensors' stubs
from safetensors.torch import load_file, save_file

from rasa_hred.core.model import HRED, MAX_PARAMETERS, HREDConfig
from rasa_hred.core.vocab import Vocabulary
from rasa_hred.errors import UserError

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "rasa-hred-model"

#: ``config.json`` holds sizes and settings: a few KB.
MAX_CONFIG_BYTES = 1 << 20
#: A safetensors header is about 150 bytes of JSON per tensor; the HRED has 20 to 60 tensors.
MAX_HEADER_BYTES = 1 << 20
#: The float types a weights file may store, and their sizes (the model trains and saves
#: float32; half-precision copies are cast back on load).
WEIGHT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4}


def max_weights_bytes(parameters: int) -> int:
    """The largest weights file a model of ``parameters`` parameters can have."""
    return 8 + MAX_HEADER_BYTES + parameters * max(WEIGHT_DTYPES.values())


#: The largest weights file of any loadable model (archive readers size their limits by it).
MAX_WEIGHTS_BYTES = max_weights_bytes(MAX_PARAMETERS)


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
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as error:
        raise CheckpointError(f"{path}: missing; is {directory} a rasa-hred model?") from error
    except OSError as error:
        raise CheckpointError(f"{path}: unreadable ({error.strerror})") from error
    if len(data) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: larger than the limit of {MAX_CONFIG_BYTES} bytes")
    return parse_config(data, path)


def parse_config(data: bytes, source: str | Path) -> dict[str, Any]:
    """A ``config.json`` document from its bytes (read within ``MAX_CONFIG_BYTES``)."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, deep nesting
        raise CheckpointError(f"{source}: not valid JSON ({error})") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{source}: not a rasa-hred model config")
    return document


def model_config(document: dict[str, Any], source: str | Path) -> HREDConfig:
    """The validated ``HREDConfig`` of a ``config.json`` document."""
    section = document.get("model")
    if not isinstance(section, dict):
        raise CheckpointError(f'{source}: no "model" section')
    try:
        return HREDConfig.from_dict(section)
    except (TypeError, ValueError) as error:  # ModelConfigError is a ValueError
        raise CheckpointError(f"{source}: bad model section: {error}") from error


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model directory onto ``device`` in eval mode; every failure of the directory
    is a CheckpointError, raised before the model is built."""
    directory = Path(directory)
    target = resolve_device(device)
    document = read_config(directory)
    config = model_config(document, directory / CONFIG_FILE)
    try:
        vocabulary = Vocabulary.load(directory / VOCAB_FILE)
    except UserError as error:
        raise CheckpointError(str(error)) from error
    _check_vocabulary(config, vocabulary, directory)
    weights = directory / WEIGHTS_FILE
    check_weights_header(weights, config)
    model = HRED(config)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights}: unreadable ({error})") from error
    load_state(model, state, str(weights))
    model.to(target).eval()
    extra = {k: v for k, v in document.items() if k not in ("format", "version", "model")}
    return LoadedModel(model, vocabulary, extra, directory)


def _check_vocabulary(config: HREDConfig, vocabulary: Vocabulary, directory: Path) -> None:
    if len(vocabulary) != config.vocab_size:
        raise CheckpointError(
            f"{directory}: vocabulary has {len(vocabulary)} tokens, the model expects "
            f"{config.vocab_size}"
        )
    ids = {"pad_id": vocabulary.pad_id, "bos_id": vocabulary.bos_id, "eos_id": vocabulary.eos_id}
    wrong = [
        f"{name} {getattr(config, name)} (vocabulary: {id_})"
        for name, id_ in ids.items()
        if getattr(config, name) != id_
    ]
    if wrong:
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: the model's special tokens are not the vocabulary's: "
            + ", ".join(wrong)
        )


def read_weights_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (an 8-byte little-endian length, then JSON),
    read alone and within ``MAX_HEADER_BYTES``."""

    def unreadable(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: unreadable ({why})")

    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little")
            if len(prefix) == 8 and length <= MAX_HEADER_BYTES:
                raw = handle.read(length)
    except FileNotFoundError as error:
        raise CheckpointError(f"{path}: missing") from error
    except OSError as error:
        raise unreadable(str(error.strerror)) from error
    if len(prefix) < 8:
        raise unreadable("too short for a safetensors file")
    if length > MAX_HEADER_BYTES:
        raise unreadable(f"a header of {length} bytes, more than the limit of {MAX_HEADER_BYTES}")
    if len(raw) < length:
        raise unreadable("truncated header")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise unreadable(f"the header is not JSON: {error}") from error
    if not isinstance(header, dict):
        raise unreadable("the header is not a JSON object")
    return header


def check_weights_header(path: Path, config: HREDConfig) -> None:
    """The weights file holds a float tensor of the right shape for every parameter of
    ``config``, and nothing else: checked on the header, before the model is built."""
    found: dict[str, tuple[int, ...]] = {}
    for name, entry in read_weights_header(path).items():
        if name == "__metadata__":
            continue
        entry = entry if isinstance(entry, dict) else {}
        shape = entry.get("shape")
        if (
            entry.get("dtype") not in WEIGHT_DTYPES
            or not isinstance(shape, list)
            or not all(isinstance(size, int) and size >= 0 for size in shape)
        ):
            raise CheckpointError(
                f"{path}: tensor {reprlib.repr(name)} is not a float tensor with a shape"
            )
        found[name] = tuple(shape)
    check_fit(_untied(config, config.parameter_shapes()), _untied(config, found), str(path))


def _untied(config: HREDConfig, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Shapes without the output matrix when it is the embedding's (stored once, or not)."""
    if config.tie_embeddings:
        return {name: shape for name, shape in shapes.items() if name != "output.weight"}
    return shapes


def check_fit(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], source: str
) -> None:
    """The one message for weights that do not fit a config, named tensor by tensor."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(name for name in expected if name in found and found[name] != expected[name])
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source}: weights do not fit the model config (missing "
            f"{reprlib.repr(missing[:3])}, unexpected {reprlib.repr(unexpected[:3])}, wrong "
            f"shape {reprlib.repr(wrong[:3])})"
        )


def load_state(model: HRED, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that names what does not fit instead of a bare RuntimeError."""
    if model.config.tie_embeddings:
        state = {k: v for k, v in state.items() if k != "output.weight"}
        state["output.weight"] = state.get("embedding.weight", torch.empty(0))
    check_fit(
        {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()},
        {name: tuple(tensor.shape) for name, tensor in state.items()},
        source,
    )
    model.load_state_dict(state)
