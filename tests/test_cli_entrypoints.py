"""The installed ``rasa-hred`` console script, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "rasa-hred"

pytestmark = pytest.mark.skipif(
    not SCRIPT.exists(), reason=f"console script not installed at {SCRIPT} (pip install -e .)"
)


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_help_lists_corpus():
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    assert "corpus" in result.stdout
    assert "Traceback" not in result.stderr


def test_corpus_stats_help():
    result = _run("corpus", "stats", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("SPEC", "--seed", "--vocab-size", "--json"):
        assert option in result.stdout


def test_corpus_stats_on_text_file(tmp_path):
    path = tmp_path / "dialogues.txt"
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    path.write_text(
        "".join(f"hello {w}!\thi {w}, how are you?\tfine.\n" for w in words) + "lonely line\n",
        encoding="utf-8",
    )
    result = _run("corpus", "stats", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    # 8 dialogues: 6 train, 1 validation, 1 test; 3 utterances each
    assert lines["train"][1:3] == ["6", "18"]
    assert lines["validation"][1:3] == ["1", "3"]
    assert lines["test"][1:3] == ["1", "3"]
    assert "skipped: 1" in out

    result = _run("corpus", "stats", "--json", "--seed", "3", str(path))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["splits"]["train"]["dialogues"] == 6
    assert stats["splits"]["train"]["utterances"] == 18
    assert stats["skipped_total"] == 1


def test_corpus_stats_missing_path_is_a_clean_error(tmp_path):
    missing = tmp_path / "no-such-corpus.txt"
    result = _run("corpus", "stats", str(missing))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1
    assert error_lines[0].startswith("rasa-hred: error:")
    assert str(missing) in error_lines[0]
    assert result.stdout == ""


def test_corpus_stats_bad_pickle_is_a_clean_error(tmp_path):
    directory = tmp_path / "mt"
    directory.mkdir()
    for name in ("Training.triples.pkl", "Validation.triples.pkl", "Test.triples.pkl"):
        (directory / name).write_bytes(b"\x80\x04\x95")
    (directory / "Training.dict.pkl").write_bytes(b"\x80\x04\x95")
    result = _run("corpus", "stats", f"movietriples:{directory}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Training.dict.pkl" in result.stderr


def test_python_m_runs_the_same_cli():
    """``bench serve`` starts its server as ``python -m rasa_hred.cli serve``."""
    result = subprocess.run(
        [sys.executable, "-m", "rasa_hred.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("rasa-hred ")


def test_train_config_with_an_unknown_option_is_a_clean_error(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("epochs: 1\nhiden_size: 8\n")
    result = _run("train", "--config", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"rasa-hred: error: unknown option(s) in {config}: hiden_size"
    ]
    assert not (tmp_path / "out").exists()
