"""``rasa-hred eval``: the history ablation, ``--split all``, and the diversity of replies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rasa_hred.cli import main
from rasa_hred.core import training
from rasa_hred.core.evaluation import context_turns, cut_context, diversity, repeated_ngrams
from rasa_hred.core.training import TrainingConfig
from rasa_hred.corpora import load_corpus
from rasa_hred.errors import UserError
from rasa_hred.jobs import evaluate_on_corpus, reply_contexts, train_on_corpus
from rasa_hred.serving.generator import ResponseGenerator

CLI = Path(sys.executable).parent / "rasa-hred"

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WINDOW = 6  # training's max_turns: windows of 6 utterances, so at most 5 previous turns
DIALOGUES = [
    ["hello there", "hi , how are you ?", "fine thanks , and you ?", "great", "good to hear"],
    ["what film did you see ?", "a western with horses"],
    ["do you like jazz ?", "only on sundays", "me too"],
    ["is it raining ?", "yes , take an umbrella", "thanks", "you are welcome"],
    ["who directed it ?", "i do not remember", "it was a woman", "oh yes", "her name ?", "ann"],
    # 8 turns: two windows, [0:6] and [5:8], whose last utterances have 5 and 2 turns before
    ["one", "two", "three", "four", "five", "six", "seven", "eight"],
] * 3
# Previous turns of each window's last utterance, as the model is scored on them.
CONTEXTS = [4, 1, 2, 3, 5, 5, 2] * 3


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "dialogues.txt"
    path.write_text("\n".join("\t".join(d) for d in DIALOGUES) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    """A tiny model trained for one epoch, with decoding defaults stored as a user would."""
    out = tmp_path_factory.mktemp("eval") / "model"
    config = TrainingConfig(
        corpus=[str(corpus_file)],
        out=str(out),
        embedding_size=8,
        hidden_size=12,
        epochs=1,
        batch_size=8,
        max_turns=WINDOW,
        early_stopping=0,
        device="cpu",
        progress=False,
    )
    with pytest.MonkeyPatch.context() as patch:  # the training plot costs more than the epoch
        patch.setattr(training, "plot_metrics", lambda metrics_file, image: None)
        train_on_corpus(config)
    document = json.loads((out / "config.json").read_text())
    document["decoding"] = {"beam_size": 2, "mmi_lambda": 0.5, "max_length": 8}
    (out / "config.json").write_text(json.dumps(document))
    return out


def run_eval(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["eval", "--device", "cpu", "--no-progress", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --- the context cut and the counts of replies (pure) ------------------------------------


def test_cut_context_keeps_the_last_utterance_and_at_most_k_turns_before_it():
    dialogue = [[2, 10, 3], [2, 11, 3], [2, 12, 3], [2, 13, 3], [2, 14, 3]]
    assert cut_context(dialogue, 1) == dialogue[3:]
    assert cut_context(dialogue, 2) == dialogue[2:]
    assert cut_context(dialogue, 4) == dialogue
    assert cut_context(dialogue, 9) == dialogue  # more than there is: all of it
    assert cut_context(dialogue[:2], 3) == dialogue[:2]
    for bad in (0, -1, True):
        with pytest.raises(UserError, match=r"whole number >= 1, not"):
            cut_context(dialogue, bad)


def test_a_training_window_gives_one_turn_less_of_context_than_it_holds():
    assert [context_turns(window) for window in (2, 3, 10)] == [1, 2, 9]


def test_diversity_counts_repeated_trigrams_and_unk_in_replies():
    assert repeated_ngrams(["a", "b", "c", "a", "b", "c"]) == 1  # "a b c" twice
    assert repeated_ngrams(["a", "b", "a", "b", "a"]) == 1  # "a b a" twice
    assert repeated_ngrams(["a", "b", "a", "b"], n=2) == 1
    assert repeated_ngrams(["a", "b"]) == 0
    replies = [["a", "b", "c", "a", "b", "c"], ["<unk>", "is", "<unk>"], ["a", "b", "c"]]
    figures = diversity([*replies, ["b", "a", "b", "a", "b"]])
    assert figures["repeated_trigrams"] == 2
    assert figures["unk_tokens"] == 2
    assert diversity([["fine"], ["thanks"]])["repeated_trigrams"] == 0


# --- eval on a corpus -----------------------------------------------------------------------


def test_history_scores_the_same_last_utterances_for_every_k(model_dir, corpus_file):
    result = evaluate_on_corpus(model_dir, [str(corpus_file)], split="all", device="cpu")
    history = result["history"]
    assert history["trained_max_turns"] == WINDOW - 1 == result["max_turns"]
    assert history["last_utterances"] == result["dialogues"] == len(CONTEXTS)
    rows = history["by_max_turns"]
    assert [row["max_turns"] for row in rows] == [1, 2, 4, 5]
    # Only the context changes with K: the scored tokens are the same last utterances.
    assert {row["tokens_last"] for row in rows} == {result["tokens_last"]}
    assert history["shuffled_context"]["tokens_last"] == result["tokens_last"]
    assert [row["contexts_cut"] for row in rows] == [
        sum(c > row["max_turns"] for c in CONTEXTS) for row in rows
    ]
    assert rows[0]["ratio_to_1"] == 1.0
    for row in rows:
        assert row["ratio_to_1"] == pytest.approx(
            row["perplexity_last"] / rows[0]["perplexity_last"]
        )
    assert rows[0]["perplexity_last"] != rows[-1]["perplexity_last"]  # the cut reaches the model
    # The trained maximum is the plain figure, and the control is measured against it.
    assert rows[-1]["perplexity_last"] == result["perplexity_last"]
    shuffled = result["perplexity_last_shuffled_context"]
    assert history["shuffled_context"]["perplexity_last"] == shuffled
    assert history["context_gain"] == pytest.approx(shuffled / result["perplexity_last"])
    # --max-turns K moves the plain figures to that row of the ablation.
    cut = evaluate_on_corpus(model_dir, [str(corpus_file)], split="all", device="cpu", max_turns=2)
    assert cut["max_turns"] == 2
    assert cut["perplexity_last"] == pytest.approx(rows[1]["perplexity_last"])
    assert cut["perplexity"] == result["perplexity"]  # every utterance, windows as trained
    with pytest.raises(UserError, match="at most 5 previous turns"):
        evaluate_on_corpus(model_dir, [str(corpus_file)], split="all", device="cpu", max_turns=6)


def test_split_all_scores_every_dialogue_of_the_specs(model_dir, corpus_file):
    corpus = load_corpus([str(corpus_file)], seed=0)
    test = evaluate_on_corpus(model_dir, [str(corpus_file)], split="test", device="cpu")
    everything = evaluate_on_corpus(model_dir, [str(corpus_file)], split="all", device="cpu")
    assert everything["split"] == "all"
    assert everything["corpus_dialogues"] == len(DIALOGUES)
    assert test["corpus_dialogues"] == len(corpus.test) < len(DIALOGUES)
    assert everything["dialogues"] == len(CONTEXTS)  # the 8-turn dialogues give two windows


def test_replies_use_the_models_decoding_and_report_it(model_dir, corpus_file, capsys):
    args = ["--model", str(model_dir), "--corpus", str(corpus_file), "--split", "all"]
    status, out, err = run_eval(capsys, *args, "--replies", "5", "--json")
    assert status == 0, err
    result = json.loads(out)
    stored = ResponseGenerator.load(model_dir, device="cpu").decoding
    assert result["decoding"] == stored.to_dict()
    assert (stored.beam_size, stored.mmi_lambda, stored.no_repeat_ngram) == (2, 0.5, 3)
    assert result["replies"] == 5
    # What decoding forbids (trigram repeats, <unk>) does not reach the replies.
    assert result["repeated_trigrams"] == 0
    assert result["unk_tokens"] == 0
    status, out, err = run_eval(
        capsys, *args, "--replies", "2", "--json", "--decoding", '{"beam_size": 3}'
    )
    assert status == 0, err
    decoding = json.loads(out)["decoding"]
    assert (decoding["beam_size"], decoding["mmi_lambda"]) == (3, 0.5)


def test_eval_prints_the_history_table(model_dir, corpus_file, capsys):
    status, out, err = run_eval(
        capsys,
        "--model",
        str(model_dir),
        "--corpus",
        str(corpus_file),
        "--split",
        "all",
        "--replies",
        "2",
    )
    assert status == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("history:"))
    table = [line.split() for line in lines[header + 2 : header + 6]]
    assert [row[0] for row in table] == ["1", "2", "4", "5"]
    assert table[0][2] == "1.000x"
    assert "context gain" in lines[header + 6]
    assert any(
        line.split(":")[0].strip() == "decoding" and "mmi_lambda=0.5" in line for line in lines
    )


# --- clear errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_max_turns_is_a_usage_error(value):
    run = subprocess.run(
        [CLI, "eval", "--model", "m", "--corpus", "c", "--max-turns", value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert "argument --max-turns: must be a whole number >= 1" in run.stderr
    assert repr(value) in run.stderr


def test_bad_decoding_options_fail_before_scoring(model_dir, corpus_file, capsys):
    args = ["--model", str(model_dir), "--corpus", str(corpus_file)]
    status, _, err = run_eval(capsys, *args, "--decoding", '{"beam_size": 3}')
    assert status == 2 and "--replies" in err
    status, _, err = run_eval(capsys, *args, "--replies", "2", "--decoding", '{"beam_sise": 3}')
    assert status == 2 and "beam_sise" in err
    status, _, err = run_eval(capsys, *args, "--replies", "2", "--decoding", "[3]")
    assert status == 2 and "JSON object" in err


def test_reply_contexts_come_from_every_turn_and_are_a_fixed_sample():
    dialogues = [["a", "b", "c"], ["d", "e"]]
    assert reply_contexts(dialogues, 10) == [["a"], ["a", "b"], ["d"]]
    sample = reply_contexts([[str(i) for i in range(40)]], 5)
    assert len(sample) == 5 and len({len(c) for c in sample}) == 5
    assert sample == reply_contexts([[str(i) for i in range(40)]], 5)
