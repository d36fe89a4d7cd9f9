"""An HREDPolicy's config and the generator it describes, in one place.

The policy loads its generator from Rasa's model storage; the NLG server and ``bench rasa``
load it from a model archive (see ``integration.archive``). All of them call
:func:`load_policy_generator`, so a reply generated anywhere is the reply the policy itself
would generate. The defaults and the validation of the config live here too, so that a
config read from an archive means what it meant to the policy that was trained with it.
"""

from __future__ import annotations

import copy
import reprlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rasa.shared.exceptions import RasaException

from rasa_hred.core.checkpoint import CheckpointError
from rasa_hred.core.decoding import DecodingConfig, DecodingError
from rasa_hred.core.precision import DTYPE_NAMES
from rasa_hred.errors import UserError
from rasa_hred.integration.names import FALLBACK_RESPONSE, RESPONSE, SLOT

if TYPE_CHECKING:
    from rasa_hred.serving.generator import ResponseGenerator

#: ``generate``: who generates the reply (see ``integration.policy``).
GENERATE_MODES = ("in_process", "in_nlg", "nlg_server")
#: The modes in which a generator is loaded into the Rasa process.
IN_PROCESS_MODES = ("in_process", "in_nlg")

#: What can go wrong while generating a reply from a loaded model: a decoding setting, the
#: model's files, or torch itself (shapes, devices, memory; also a closed generator). The
#: policy and the in-process NLG answer these with the fallback response; anything else is
#: a bug and is raised.
GENERATION_ERRORS: tuple[type[Exception], ...] = (DecodingError, CheckpointError, RuntimeError)

_DEFAULTS: dict[str, Any] = {
    # Ties between equally confident policies go to the higher priority; RulePolicy
    # (6) and MemoizationPolicy (3) win ties, so rules and stories come first.
    "priority": 2,
    # A directory written by `rasa-hred train`; when set, nothing is trained.
    "model": None,
    # Otherwise train on these corpus specs plus the bot's own end-to-end stories.
    "corpus": ["chatterbot:english"],
    "use_stories": True,
    "epochs": 20,
    "embedding_size": 128,
    "hidden_size": 256,
    "bidirectional": True,
    "batch_size": 32,
    "seed": 0,
    "training": {},  # any other `rasa-hred train` option, e.g. {lr: 0.001}
    # When to answer: these intents, nlu_fallback, and any user turn with
    # `fallback_threshold` confidence (None turns the catch-all off).
    "intents": ["chitchat", "out_of_scope"],
    "answer_nlu_fallback": True,
    "fallback_threshold": 0.35,
    "response": RESPONSE,
    "slot": SLOT,
    "fallback_response": FALLBACK_RESPONSE,
    "generate": "in_process",
    # Turns of the conversation the HRED sees (None: all). Only this: the policy has no
    # tracker featurizer (see HREDPolicy._create_featurizer).
    "max_history": 10,
    "device": "auto",
    # Inference precision: auto = bfloat16 where the CPU/GPU has bf16 units, else float32.
    "dtype": "auto",
    # PyTorch's CPU threads for generation in this process (None: PyTorch's default;
    # serving.threads has the measurements).
    "threads": None,
    "decoding": {},  # DecodingConfig options, e.g. {beam_size: 5, mmi_lambda: 0.3}
}

#: The policy's default ``max_history``: the turns the HRED sees.
DEFAULT_MAX_HISTORY: int = _DEFAULTS["max_history"]


class HREDPolicyError(RasaException, UserError):
    """A configuration or model problem of an HREDPolicy, raised when it is built, trained
    or loaded (``rasa train``/``rasa run`` start); the CLI prints it as a user error too."""


def default_config() -> dict[str, Any]:
    """``HREDPolicy.get_default_config()``: a fresh copy, safe to change."""
    return copy.deepcopy(_DEFAULTS)


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A policy config as the policy sees it: ``config`` over the defaults (a Rasa model
    archive stores only the options the bot's config.yml set)."""
    return default_config() | dict(config)


def validate_policy_config(config: Mapping[str, Any]) -> None:
    """Refuse a config the policy cannot work with, before anything is trained or loaded:
    the policy's own (Rasa merges it over the defaults) and one read from a model archive
    (``integration.archive``). Each problem is one line naming the option."""
    if config.get("generate") not in GENERATE_MODES:
        raise HREDPolicyError(
            f"HREDPolicy: generate must be one of {', '.join(GENERATE_MODES)}, "
            f"not {_show(config.get('generate'))}"
        )
    threshold = config.get("fallback_threshold")
    if threshold is not None and not (_is_number(threshold) and 0.0 <= float(threshold) <= 1.0):
        raise HREDPolicyError("HREDPolicy: fallback_threshold must be between 0 and 1 (or null)")
    if not config.get("model") and not config.get("corpus"):
        raise HREDPolicyError("HREDPolicy: set either `model` (a trained directory) or `corpus`")
    max_history = config.get("max_history")
    if max_history is not None and not (_is_int(max_history) and max_history >= 0):
        raise HREDPolicyError(
            "HREDPolicy: max_history must be a number of turns >= 0 (or null), "
            f"not {_show(max_history)}"
        )
    if config.get("featurizer"):
        raise HREDPolicyError(
            "HREDPolicy: the HRED reads the conversation's texts and uses no featurizer; "
            "remove `featurizer` from its config"
        )
    for key, (check, what) in _OPTION_TYPES.items():
        if key in config and not check(config[key]):
            raise HREDPolicyError(f"HREDPolicy: {key} must be {what}, not {_show(config[key])}")
    decoding_config(config)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_name(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_names(value: object) -> bool:
    return isinstance(value, list) and all(_is_name(item) for item in value)


def _show(value: object) -> str:
    """A value from a config file, shortened for a one-line message."""
    return reprlib.repr(value)


#: The type of each option the checks above do not cover: a check and what it wants.
_OPTION_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "priority": (_is_int, "a whole number"),
    "model": (lambda v: v is None or _is_name(v), "a model directory (or null)"),
    "corpus": (lambda v: v is None or _is_names(v), "a list of corpus specs"),
    "use_stories": (lambda v: isinstance(v, bool), "true or false"),
    "epochs": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "embedding_size": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "hidden_size": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "bidirectional": (lambda v: isinstance(v, bool), "true or false"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "seed": (_is_int, "a whole number"),
    "training": (lambda v: v is None or isinstance(v, Mapping), "a mapping of training options"),
    "intents": (lambda v: v is None or _is_names(v), "a list of intent names"),
    "answer_nlu_fallback": (lambda v: isinstance(v, bool), "true or false"),
    "response": (_is_name, "a response name"),
    "slot": (_is_name, "a slot name"),
    "fallback_response": (_is_name, "a response name"),
    "device": (_is_name, "a device name (auto, cpu, cuda, cuda:1)"),
    "dtype": (lambda v: v in DTYPE_NAMES, f"one of {', '.join(DTYPE_NAMES)}"),
    "threads": (lambda v: v is None or (_is_int(v) and v >= 1), "a whole number >= 1, or null"),
}


def decoding_config(config: Mapping[str, Any]) -> DecodingConfig | None:
    """The policy's ``decoding`` option as a ``DecodingConfig``; ``None`` (empty or unset)
    means the model directory's own defaults."""
    stored = config.get("decoding")
    if not stored:
        return None
    if not isinstance(stored, Mapping):
        raise HREDPolicyError("HREDPolicy: decoding must be a mapping of decoding options")
    try:
        return DecodingConfig.from_dict(stored)
    except (DecodingError, TypeError, ValueError) as error:
        raise HREDPolicyError(f"HREDPolicy: decoding: {error}") from error


def load_policy_generator(
    model_dir: str | Path,
    config: Mapping[str, Any],
    *,
    device: str | None = None,
    dtype: str | None = None,
    batching: bool | None = None,
    batch_wait_ms: float = 0.0,
    max_batch_size: int = 32,
) -> ResponseGenerator:
    """The generator of an HREDPolicy with ``config`` (over the defaults) whose model is in
    ``model_dir``: its ``device``, its ``decoding`` over the model's defaults, and
    ``max_history`` turns of context. ``device``, ``dtype`` and ``batching`` override the policy's
    (which batches only in ``in_nlg`` mode, where concurrent conversations generate at
    once). Errors are ``UserError``s (``CheckpointError``, ``HREDPolicyError``)."""
    from rasa_hred.serving.generator import ResponseGenerator
    from rasa_hred.serving.threads import use_serving_threads

    config = with_defaults(config)
    use_serving_threads(config["threads"])
    if batching is None:
        batching = config["generate"] == "in_nlg"
    return ResponseGenerator.load(
        model_dir,
        device=device or config["device"],
        dtype=dtype or config["dtype"],
        decoding=decoding_config(config),
        max_turns=config["max_history"],
        batching=batching,
        batch_wait_ms=batch_wait_ms,
        max_batch_size=max_batch_size,
    )
