"""Hostile model directories: every config field, the model's size and the weights' shapes
are checked before the model is built, and every failure is one CheckpointError line (an
HREDPolicyError in Rasa). Each test writes its own crafted files."""

from __future__ import annotations

import itertools
import json
import struct

import pytest
from rasa.engine.graph import ExecutionContext
from rasa.engine.storage.local_model_storage import LocalModelStorage
from rasa.engine.storage.resource import Resource
from support.hostile import cost_of, set_model_config, small_model_dir

from rasa_hred.core.checkpoint import (
    MAX_CONFIG_BYTES,
    MAX_HEADER_BYTES,
    CheckpointError,
    load_model,
)
from rasa_hred.core.model import HRED, MAX_PARAMETERS, HREDConfig
from rasa_hred.integration.policy import HREDPolicy, HREDPolicyError

#: Hang guard for a refused load (the bar is < 1 s).
SECONDS = 20
#: The bar for a refused load's peak memory.
PEAK_MB = 200


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"embedding_size": -1}, "embedding_size must be a whole number >= 1, not -1"),
        ({"decoder_layers": 0}, "decoder_layers must be a whole number >= 1, not 0"),
        ({"utterance_hidden": 2.5}, "utterance_hidden must be a whole number >= 1"),
        ({"vocab_size": "25"}, "vocab_size must be a whole number >= 1, not '25'"),
        ({"context_layers": True}, "context_layers must be a whole number >= 1, not True"),
        ({"pad_id": 10**6}, r"pad_id must be a token id in 0\.\.24, not 1000000"),
        ({"eos_id": -1}, r"eos_id must be a token id in 0\.\.24, not -1"),
        ({"bos_id": 0}, "pad_id, bos_id and eos_id must be three different tokens"),
        ({"bidirectional": "yes"}, "bidirectional must be true or false, not 'yes'"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), not 1.0"),
        ({"dropout": None}, r"dropout must be a number in \[0, 1\), not None"),
        ({"loss_on": "first"}, "loss_on must be one of all, last, not 'first'"),
        ({"hiden": 8}, "unknown model config keys: hiden"),
        ({"decoder_hidden": 40_000}, "more than the limit of 100,000,000"),
        ({"utterance_layers": 10**9}, "utterance_layers must be at most 32, not 1000000000"),
    ],
)
def test_each_bad_config_field_is_one_line_naming_it(tmp_path, fields, message):
    directory = set_model_config(small_model_dir(tmp_path / "m"), **fields)
    with pytest.raises(CheckpointError, match=message) as raised:
        load_model(directory)
    assert "\n" not in str(raised.value)
    assert str(directory / "config.json") in str(raised.value)


def test_a_long_hostile_value_is_shortened_in_the_message(tmp_path):
    directory = set_model_config(small_model_dir(tmp_path / "m"), loss_on="x" * 100_000)
    with pytest.raises(CheckpointError, match="loss_on") as raised:
        load_model(directory)
    assert len(str(raised.value)) < 300


@pytest.mark.parametrize("fields", [{"hidden": 6000}, {"decoder_hidden": 40_000}])
def test_a_huge_config_is_refused_before_anything_is_allocated(tmp_path, fields):
    """``hidden 6000`` (every GRU 6000 wide, a 1 KB config.json) cost 65 s and 3.9 GB before
    its weights were found not to fit; ``decoder_hidden 40000`` tried 19 GB."""
    if "hidden" in fields:
        fields = {f"{part}_hidden": 6000 for part in ("utterance", "context", "decoder")}
    directory = set_model_config(small_model_dir(tmp_path / "m"), **fields)
    assert (directory / "config.json").stat().st_size < 1024
    cost = cost_of("rasa_hred.core.checkpoint", "load_model", str(directory))
    assert "CheckpointError" in cost["error"]["types"]
    assert "parameters, more than the limit" in cost["error"]["message"]
    assert cost["seconds"] < SECONDS
    assert cost["peak_growth_mb"] < PEAK_MB


def test_weights_that_do_not_fit_are_refused_from_the_header_before_building(tmp_path):
    """A config of 64M parameters (256 MB to build) over a tiny model's weights: the
    safetensors header says they do not fit, so the model is never built."""
    directory = small_model_dir(tmp_path / "m")
    big = {f"{part}_hidden": 2000 for part in ("utterance", "context", "decoder")}
    count = HREDConfig(vocab_size=25, embedding_size=16, **big).parameter_count()
    assert 50_000_000 < count < MAX_PARAMETERS
    set_model_config(directory, **big)
    cost = cost_of("rasa_hred.core.checkpoint", "load_model", str(directory))
    assert "CheckpointError" in cost["error"]["types"]
    assert "weights do not fit the model config" in cost["error"]["message"]
    assert "wrong shape" in cost["error"]["message"]
    assert cost["seconds"] < SECONDS
    assert cost["peak_growth_mb"] < PEAK_MB


def write_weights_header(directory, header: bytes, length: int | None = None) -> None:
    """Replace model.safetensors by a length prefix and ``header`` (and no data)."""
    size = len(header) if length is None else length
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", size) + header)


@pytest.mark.parametrize(
    "length, header, message",
    [
        (2**40, b"{}", f"a header of {2**40} bytes, more than the limit of {MAX_HEADER_BYTES}"),
        (100, b"{}", "truncated header"),
        (None, b"[1, 2]", "the header is not a JSON object"),
        (None, b"{" * 100_000, "the header is not JSON"),
        (None, b'{"embedding.weight": {"dtype": "I64", "shape": [26, 16]}}', "not a float"),
        (None, b'{"embedding.weight": {"dtype": "F32", "shape": [-1]}}', "not a float"),
        (None, b'{"embedding.weight": {"dtype": "F32", "shape": [26, 16]}}', "missing"),
    ],
)
def test_a_hostile_weights_header_is_refused(tmp_path, length, header, message):
    directory = small_model_dir(tmp_path / "m")
    write_weights_header(directory, header, length)
    with pytest.raises(CheckpointError, match=message):
        load_model(directory)


def test_a_short_or_missing_weights_file_is_refused(tmp_path):
    directory = small_model_dir(tmp_path / "m")
    (directory / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="unreadable \\(too short"):
        load_model(directory)
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_model(directory)


def test_a_header_that_fits_over_short_data_is_refused(tmp_path):
    """Shapes right, data cut short: safetensors' own check, as a CheckpointError."""
    directory = small_model_dir(tmp_path / "m")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(directory)


def test_config_json_is_read_within_its_bound(tmp_path):
    directory = small_model_dir(tmp_path / "m")
    config = directory / "config.json"
    config.write_text(json.dumps({"format": "rasa-hred-model", "pad": "x" * MAX_CONFIG_BYTES}))
    with pytest.raises(CheckpointError, match=f"larger than the limit of {MAX_CONFIG_BYTES}"):
        load_model(directory)
    config.write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(directory)
    config.write_text(json.dumps({"format": "rasa-hred-model", "model": [1]}))
    with pytest.raises(CheckpointError, match='no "model" section'):
        load_model(directory)


def test_special_tokens_must_be_the_vocabularys(tmp_path):
    directory = set_model_config(small_model_dir(tmp_path / "m"), pad_id=5)
    with pytest.raises(CheckpointError, match=r"pad_id 5 \(vocabulary: 0\)"):
        load_model(directory)


def test_a_bad_vocabulary_is_a_checkpoint_error(tmp_path):
    directory = small_model_dir(tmp_path / "m")
    (directory / "vocab.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a vocabulary file"):
        load_model(directory)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"embedding_size": -1}, "embedding_size"),
        ({"decoder_layers": 0}, "decoder_layers"),
        ({"pad_id": 999}, "pad_id"),
        ({"decoder_hidden": 40_000}, "parameters"),
    ],
)
def test_the_policy_turns_every_load_error_into_a_policy_error(tmp_path, fields, message):
    """`rasa run` loads the policy through Rasa's model storage: a hostile model there is
    an HREDPolicyError (Rasa prints it), not a crash."""
    storage = LocalModelStorage(tmp_path)
    resource = Resource("hred")
    with storage.write_to(resource) as directory:
        set_model_config(small_model_dir(directory), **fields)
    config = HREDPolicy.get_default_config() | {"device": "cpu"}
    with pytest.raises(HREDPolicyError, match=message) as raised:
        HREDPolicy.load(config, storage, resource, ExecutionContext(None, "test"))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "bidirectional, maxout, tie, layers, attention",
    list(itertools.product([False, True], [False, True], [False, True], [1, 2], [False, True])),
)
def test_the_config_knows_the_models_shapes(bidirectional, maxout, tie, layers, attention):
    """``HREDConfig.parameter_shapes`` (what a weights file is checked against, and the size
    bound) is exactly the state dict of the model built from it."""
    config = HREDConfig(
        vocab_size=30,
        embedding_size=6,
        utterance_hidden=5,
        context_hidden=7,
        decoder_hidden=4,
        utterance_layers=layers,
        context_layers=3 - layers,
        decoder_layers=layers + 1,
        bidirectional=bidirectional,
        maxout=maxout,
        tie_embeddings=tie,
        attention=attention,
    )
    model = HRED(config)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    assert shapes == config.parameter_shapes()
    assert model.num_parameters() == config.parameter_count()
