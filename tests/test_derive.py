"""``integration.derive``: a config that reuses an archive's HRED under any ``generate`` mode.

Fast tests build a Rasa-like archive around an untrained 16-wide HRED; the one that reads a
real ``rasa train`` archive (the session's ``demo_model``) is marked slow.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml
from support import REPO
from support.hostile import small_model_dir

from rasa_hred.errors import UserError
from rasa_hred.integration.derive import derive_config, hred_entries
from rasa_hred.integration.loading import GENERATE_MODES
from rasa_hred.serving.generator import ResponseGenerator

MODEL_FILES = ("config.json", "vocab.json", "model.safetensors")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A Rasa-like archive: an HREDPolicy node in metadata.json and its three model files."""
    model = small_model_dir(tmp_path / "hred-source")
    resource = "train_rasa_hred.HREDPolicy2"
    node = {
        "uses": "rasa_hred.integration.policy.HREDPolicy",
        "config": {"max_history": 4},
        "resource": {"name": resource},
    }
    path = tmp_path / "demo.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for file in MODEL_FILES:
            _add(tar, f"components/{resource}/{file}", (model / file).read_bytes())
        metadata = {"predict_schema": {"nodes": {"run_rasa_hred.HREDPolicy2": node}}}
        _add(tar, "metadata.json", json.dumps(metadata).encode())
    return path


def _config(tmp_path: Path, policies: list[dict]) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"recipe": "default.v1", "pipeline": [], "policies": policies}))
    return path


@pytest.mark.parametrize("generate", GENERATE_MODES)
def test_the_policy_gets_the_mode_and_the_archives_hred(archive, tmp_path, generate):
    original = yaml.safe_load((REPO / "config.yml").read_text())
    out = tmp_path / "derived"
    written = derive_config(archive, REPO / "config.yml", out, generate)
    assert written == out / "config.yml"
    derived = yaml.safe_load(written.read_text())
    (before,) = hred_entries(original)
    (after,) = hred_entries(derived)
    assert after == before | {"generate": generate, "model": str(out / "hred")}
    assert derived["pipeline"] == original["pipeline"]
    others = [p for p in derived["policies"] if p is not after]
    assert others == [p for p in original["policies"] if p != before]
    source = tmp_path / "hred-source"
    for file in MODEL_FILES:
        assert (out / "hred" / file).read_bytes() == (source / file).read_bytes()
    assert ResponseGenerator.load(after["model"], device="cpu").vocabulary


def test_options_go_on_the_policy_and_are_checked(archive, tmp_path):
    config = _config(tmp_path, [{"name": "rasa_hred.HREDPolicy", "corpus": ["chatterbot"]}])
    written = derive_config(archive, config, tmp_path / "a", "in_nlg", {"threads": 1})
    (policy,) = hred_entries(yaml.safe_load(written.read_text()))
    assert policy["threads"] == 1 and policy["generate"] == "in_nlg"
    with pytest.raises(UserError, match="threads must be a whole number >= 1"):
        derive_config(archive, config, tmp_path / "b", "in_nlg", {"threads": 0})
    assert not (tmp_path / "b").exists()


def test_a_config_without_an_hred_policy_is_refused_before_anything_is_written(archive, tmp_path):
    config = _config(tmp_path, [{"name": "RulePolicy"}, {"name": "MemoizationPolicy"}])
    with pytest.raises(UserError, match=r"no rasa_hred\.HREDPolicy among the policies"):
        derive_config(archive, config, tmp_path / "out", "in_process")
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty.yml").write_text("")
    with pytest.raises(UserError, match=r"no rasa_hred\.HREDPolicy"):
        derive_config(archive, tmp_path / "empty.yml", tmp_path / "out", "in_process")
    with pytest.raises(UserError, match="cannot read"):
        derive_config(archive, tmp_path / "missing.yml", tmp_path / "out", "in_process")


def test_only_the_policys_modes_are_accepted(archive, tmp_path):
    with pytest.raises(UserError, match="generate must be one of in_process, in_nlg, nlg_server"):
        derive_config(archive, REPO / "config.yml", tmp_path / "out", "in_the_cloud")
    assert not (tmp_path / "out").exists()


def test_a_bad_archive_leaves_nothing(tmp_path):
    with pytest.raises(UserError):
        derive_config(REPO / "domain.yml", REPO / "config.yml", tmp_path / "out", "in_nlg")
    assert not (tmp_path / "out").exists()


def test_deriving_again_replaces_the_hred(archive, tmp_path):
    out = tmp_path / "out"
    derive_config(archive, REPO / "config.yml", out, "in_process")
    (out / "hred" / "stale.txt").write_text("left from before")
    derive_config(archive, REPO / "config.yml", out, "in_nlg")
    assert sorted(p.name for p in (out / "hred").iterdir()) == sorted(MODEL_FILES)


@pytest.mark.slow
def test_a_rasa_trained_archive_is_derived(demo_model, tmp_path):
    project = demo_model.parent.parent  # tests/support/models.py: write_demo_project
    written = derive_config(demo_model, project / "config.yml", tmp_path / "out", "in_nlg")
    (policy,) = hred_entries(yaml.safe_load(written.read_text()))
    assert policy["generate"] == "in_nlg" and policy["max_history"] == 6
    assert Path(policy["model"]) == tmp_path / "out" / "hred"
    assert ResponseGenerator.load(policy["model"], device="cpu").vocabulary
