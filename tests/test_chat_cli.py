"""``rasa-hred chat`` through the installed console script (stdin, a terminal) and
``rasa-hred respond`` through the CLI's ``main`` (the same code, without a process start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rasa_hred.cli import main
from rasa_hred.core.checkpoint import save_model
from rasa_hred.core.model import HRED, HREDConfig
from rasa_hred.core.vocab import Vocabulary, tokenize

CLI = str(Path(sys.executable).parent / "rasa-hred")
WORDS = tokenize("hello hi how are you fine thanks good what is your name my the dog yes no ok")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny model: no thread contention


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    vocab = Vocabulary.build([WORDS])
    torch.manual_seed(0)
    model = HRED(
        HREDConfig(
            vocab_size=len(vocab),
            embedding_size=16,
            utterance_hidden=16,
            context_hidden=16,
            decoder_hidden=16,
            tie_embeddings=False,
        )
    )
    with torch.no_grad():
        model.output.weight.mul_(8)
        model.output.bias[vocab.eos_id] += 2.0
    directory = tmp_path_factory.mktemp("chat") / "model"
    save_model(directory, model, vocab, extra={"decoding": {"max_length": 12}})
    return directory


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], input=stdin, capture_output=True, text=True, timeout=120, env=ENV
    )


@pytest.fixture
def respond(capsys, one_torch_thread):
    """``rasa-hred respond ARGS`` in this process: (exit status, stdout, stderr)."""

    def call(*args: str) -> tuple[int, str, str]:
        status = main(["respond", *args])
        out, err = capsys.readouterr()
        return status, out, err

    return call


def test_chat_keeps_only_what_the_two_speakers_said(model_dir, respond):
    session = "hello there\n\nhow are you?\n/history\n/reset\n/history\n/quit\nnever read\n"
    result = run("chat", "--model", str(model_dir), "--device", "cpu", stdin=session)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 + 4 + 1 + 1, lines  # two replies, /history, /reset, /history
    first, second = lines[0], lines[1]
    assert first.startswith("bot: ") and second.startswith("bot: ")
    assert lines[2:6] == ["you: hello there", first, "you: how are you?", second]
    assert lines[6] == "(new conversation)"
    assert lines[7] == "(no history)"
    # the second reply saw the whole conversation: the same as `respond` with it
    status, out, err = respond(
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        "--",
        "hello there",
        first.removeprefix("bot: "),
        "how are you?",
    )
    assert status == 0, err
    assert out.strip() == second.removeprefix("bot: ")


def test_chat_ends_at_eof_and_rejects_unknown_commands(model_dir):
    result = run("chat", "--model", str(model_dir), "--device", "cpu", stdin="/nope\nhi\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("unknown command /nope")
    assert lines[1].startswith("bot: ") and len(lines) == 2


def test_respond_json_n_best(model_dir, respond):
    status, out, err = respond(
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        "--json",
        "--n-best",
        "3",
        "--beam-size",
        "4",
        "--",
        "hello",
        "hi, how are you?",
    )
    assert status == 0, err
    replies = json.loads(out)
    assert len(replies) == 3
    scores = [r["score"] for r in replies]
    assert all(isinstance(s, float) for s in scores)
    assert scores == sorted(scores, reverse=True)
    assert len({r["text"] for r in replies}) == 3
    assert all(r["text"] and r["tokens"] for r in replies)


def test_respond_max_turns_keeps_only_the_last_turns(model_dir, respond):
    def reply(*extra: str, context: tuple[str, ...]) -> list:
        status, out, err = respond(
            "--model",
            str(model_dir),
            "--device",
            "cpu",
            "--json",
            "--n-best",
            "2",
            *extra,
            "--",
            *context,
        )
        assert status == 0, err
        return json.loads(out)

    last_only = reply("--max-turns", "1", context=("hello", "hi, how are you?"))
    assert last_only == reply(context=("hi, how are you?",))
    assert last_only != reply(context=("hello", "hi, how are you?"))


def test_errors_are_one_line(tmp_path, model_dir, respond):
    status, out, err = respond("--model", str(tmp_path / "missing"), "--", "hi")
    assert status == 2 and out == ""
    assert err.strip().splitlines() == [
        f"rasa-hred: error: {tmp_path / 'missing'}: no such model directory"
    ]
    status, out, err = respond("--model", str(model_dir), "--top-p", "2", "--method", "sample")
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "top_p" in err


def test_interactive_chat_in_a_terminal(model_dir):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        CLI,
        ["chat", "--model", str(model_dir), "--device", "cpu"],
        env=ENV,
        encoding="utf-8",
        timeout=60,
    )
    try:
        child.expect("/help lists the commands")
        child.expect_exact("you: ")
        child.sendline("hello there")
        child.expect(r"bot: (.+)\r\n")
        reply = child.match.group(1)
        child.expect_exact("you: ")
        child.sendline("/history")
        child.expect_exact(f"you: hello there\r\nbot: {reply}\r\n")
        child.expect_exact("you: ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
