"""Training runs, checkpoints, resume, interruption and DistributedDataParallel."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rasa_hred.cli import main
from rasa_hred.core.batching import windows
from rasa_hred.core.checkpoint import CheckpointError, load_model, save_model
from rasa_hred.core.model import DialogueBatch
from rasa_hred.core.training import LAST_CHECKPOINT, Trainer, TrainingConfig, train_model
from rasa_hred.core.vocab import Vocabulary
from rasa_hred.errors import UserError
from rasa_hred.jobs import train_on_corpus

CLI = Path(sys.executable).parent / "rasa-hred"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: no waiting for busy cores

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIALOGUES = [
    ["hello there", "hi , how are you ?", "fine thanks , and you ?", "great"],
    ["what film did you see ?", "a western with horses"],
    ["do you like jazz ?", "only on sundays", "me too"],
    ["is it raining ?", "yes , take an umbrella"],
    ["who directed it ?", "i do not remember", "it was a woman"],
    ["can you help me ?", "sure , what is it ?"],
] * 4


def small_config(out: Path, **overrides) -> TrainingConfig:
    values = dict(
        out=str(out),
        embedding_size=16,
        hidden_size=24,
        dropout=0.1,
        epochs=2,
        batch_size=4,
        early_stopping=0,
        device="cpu",
        progress=False,
        seed=3,
    )
    return TrainingConfig(**(values | overrides))


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    path = tmp_path / "dialogues.txt"
    path.write_text("\n".join("\t".join(d) for d in DIALOGUES) + "\n", encoding="utf-8")
    return path


def test_model_directory_round_trip_gives_identical_logits(tmp_path):
    trainer = Trainer(small_config(tmp_path / "m"), DIALOGUES, DIALOGUES[:3])
    trainer.fit()
    loaded = load_model(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {
        "config.json",
        "vocab.json",
        "model.safetensors",
        "metrics.jsonl",
        "training.png",
        LAST_CHECKPOINT,
    }
    batch = DialogueBatch.from_ids([[[2, 9, 10, 3], [2, 11, 3]]], trainer.vocabulary.pad_id)
    best_epoch = trainer.best  # the saved model is the best epoch; compare against the last one
    assert best_epoch < float("inf")
    last = load_model(tmp_path / "m" / LAST_CHECKPOINT)
    trainer.model.eval()
    expected, _ = trainer.model.token_log_probs(batch)
    got, _ = last.model.token_log_probs(batch)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert loaded.vocabulary.tokens == trainer.vocabulary.tokens


def test_resume_continues_the_same_run(tmp_path):
    straight = Trainer(small_config(tmp_path / "a", epochs=3), DIALOGUES, DIALOGUES[:3])
    straight.fit()
    first = Trainer(small_config(tmp_path / "b", epochs=2), DIALOGUES, DIALOGUES[:3])
    first.fit()
    resumed = Trainer(small_config(tmp_path / "b", epochs=3), DIALOGUES, DIALOGUES[:3], resume=True)
    assert resumed.epoch == 2
    resumed.fit()
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items()
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_corrupted_and_foreign_checkpoints_give_clear_errors(tmp_path):
    trainer = Trainer(small_config(tmp_path / "m", epochs=1), DIALOGUES, DIALOGUES[:3])
    trainer.fit()
    model_dir = tmp_path / "m"
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_model(model_dir)
    # A pickle is not a model: it is never unpickled.
    torch.save({"embedding.weight": torch.zeros(2)}, weights)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(model_dir)
    (model_dir / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="not a rasa-hred model"):
        load_model(model_dir)
    with pytest.raises(CheckpointError, match="no such model directory"):
        load_model(tmp_path / "missing")


def test_weights_of_another_size_are_refused(tmp_path):
    a = Trainer(small_config(tmp_path / "a", epochs=1), DIALOGUES, DIALOGUES[:3])
    b = Trainer(small_config(tmp_path / "b", epochs=1, hidden_size=32), DIALOGUES, DIALOGUES[:3])
    save_model(tmp_path / "a", a.model, a.vocabulary)
    save_model(tmp_path / "b", b.model, b.vocabulary)
    (tmp_path / "a" / "model.safetensors").write_bytes(
        (tmp_path / "b" / "model.safetensors").read_bytes()
    )
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "a")


def test_cli_train_then_eval(tmp_path, corpus_file, capsys):
    out = tmp_path / "model"
    config = tmp_path / "config.yaml"
    config.write_text("embedding_size: 16\nhidden_size: 24\nbatch_size: 4\n")
    run = subprocess.run(
        [
            CLI,
            "train",
            "--config",
            config,
            "--corpus",
            corpus_file,
            "--out",
            out,
            "--epochs",
            "2",
            "--device",
            "cpu",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 2
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["hidden_size" if False else "decoder_hidden"] == 24
    assert saved["training"]["batch_size"] == 4
    # eval and the refused second run through main(): the same CLI, no second process start
    status = main(
        [
            "eval",
            "--model",
            str(out),
            "--corpus",
            str(corpus_file),
            "--split",
            "test",
            "--replies",
            "5",
            "--json",
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    result = json.loads(captured.out)
    for key in (
        "perplexity",
        "perplexity_last",
        "error_rate",
        "tokens",
        "perplexity_last_shuffled_context",
        "distinct_1",
        "unique_reply_share",
    ):
        assert key in result
    assert 1.0 < result["perplexity"] < len(Vocabulary.load(out / "vocab.json"))
    # Running again into the same directory without --resume would mix two runs.
    assert main(["train", "--corpus", str(corpus_file), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_ctrl_c_leaves_a_resumable_checkpoint(tmp_path, corpus_file):
    out = tmp_path / "model"
    big = tmp_path / "big.txt"
    big.write_text(corpus_file.read_text() * 10)  # epochs of ~100 batches
    process = subprocess.Popen(
        [
            CLI,
            "train",
            "--corpus",
            big,
            "--out",
            out,
            "--epochs",
            "50",
            "--batch-size",
            "2",
            "--embedding-size",
            "16",
            "--hidden-size",
            "24",
            "--device",
            "cpu",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (out / "metrics.jsonl").exists(), "no epoch finished in time"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "--resume" in stderr and "Traceback" not in stderr
    assert (out / LAST_CHECKPOINT / "training_state.pt").exists()
    state = torch.load(out / LAST_CHECKPOINT / "training_state.pt", weights_only=True)
    done = state["epoch"]
    resumed = subprocess.run(
        [
            CLI,
            "train",
            "--corpus",
            big,
            "--out",
            out,
            "--epochs",
            str(done + 1),
            "--batch-size",
            "2",
            "--embedding-size",
            "16",
            "--hidden-size",
            "24",
            "--device",
            "cpu",
            "--no-progress",
            "--resume",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["epochs"] == done + 1


def test_train_on_corpus_reads_corpus_specs(tmp_path, corpus_file):
    extra = [["an extra dialogue", "with zebras"]]
    config = small_config(tmp_path / "m", corpus=[str(corpus_file)], epochs=1)
    result = train_on_corpus(config, extra_dialogues=extra)
    assert result.epochs_run == 1
    loaded = load_model(tmp_path / "m")
    assert loaded.extra["corpus"]["specs"] == [str(corpus_file)]
    assert "zebras" in loaded.vocabulary  # the extra dialogues were trained on


def test_train_model_takes_dialogues_and_a_vocabulary(tmp_path):
    vocabulary = Vocabulary.build(u.split() for d in DIALOGUES for u in d)
    vocabulary = Vocabulary([*vocabulary.tokens, "unseen"])
    result = train_model(
        small_config(tmp_path / "m", epochs=1),
        DIALOGUES,
        DIALOGUES[:3],
        vocabulary,
        extra={"note": "kept"},
    )
    assert result.epochs_run == 1 and result.best_valid_perplexity < float("inf")
    loaded = load_model(tmp_path / "m")
    assert loaded.vocabulary == vocabulary
    assert loaded.extra["note"] == "kept"


def test_training_config_from_dict():
    config = TrainingConfig.from_dict({"corpus": "text:a.txt", "epochs": 3})
    assert config.corpus == ["text:a.txt"] and config.epochs == 3
    with pytest.raises(UserError, match=r"^unknown training option\(s\): epoch, hiden_size$"):
        TrainingConfig.from_dict({"epoch": 3, "hiden_size": 8})
    with pytest.raises(UserError, match=r"^unknown option\(s\) in my\.yaml: epoch$"):
        TrainingConfig.from_dict({"epoch": 3}, what="option(s) in my.yaml")


@pytest.mark.slow
def test_torchrun_two_cpu_processes_end_with_identical_weights(tmp_path, corpus_file):
    script = tmp_path / "ddp_train.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, sys
        import torch.distributed as dist
        from safetensors.torch import save_file
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_training import DIALOGUES, small_config
        from rasa_hred.core.training import Trainer
        config = small_config({str(tmp_path / "out")!r}, epochs=2, batch_size=2, threads=1)
        trainer = Trainer(config, DIALOGUES, DIALOGUES[:3])
        trainer.fit()
        rank = dist.get_rank()
        state = {{k: v.contiguous() for k, v in trainer.model.state_dict().items()
                 if k != "output.weight"}}
        save_file(state, {str(tmp_path)!r} + f"/rank{{rank}}.safetensors")
        dist.destroy_process_group()
    """)
    )
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [Path(sys.executable).parent / "torchrun", "--standalone", "--nproc_per_node", "2", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (
        load_file(tmp_path / "rank0.safetensors"),
        load_file(tmp_path / "rank1.safetensors"),
    )
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
    initial = Trainer(small_config(tmp_path / "fresh", epochs=0), DIALOGUES, DIALOGUES[:3])
    changed = any(
        not torch.equal(rank0[name], tensor)
        for name, tensor in initial.model.state_dict().items()
        if name in rank0
    )
    assert changed, "training under torchrun did not change the weights"
    records = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 2  # rank 0 alone wrote the metrics


@pytest.mark.parametrize("align_end", [False, True])
@pytest.mark.parametrize("turns", [2, 3, 9, 10, 11, 19, 22])
@pytest.mark.parametrize("max_turns", [2, 3, 10])
def test_windows_make_every_turn_after_the_first_a_target_once(
    turns: int, max_turns: int, align_end: bool
) -> None:
    dialogue = [[i] for i in range(turns)]
    cut = windows(dialogue, max_turns, align_end=align_end)
    targets = [utterance[0] for window in cut for utterance in window[1:]]
    assert sorted(targets) == list(range(1, turns))
    assert all(2 <= len(window) <= max_turns for window in cut)
    if align_end:  # every window but the first is full: its last utterance has most context
        assert all(len(window) == min(turns, max_turns) for window in cut[1:])
        assert cut[-1][-1] == [turns - 1]
