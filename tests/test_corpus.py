"""Corpus loaders, splits, the restricted unpickler and corpus statistics."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import pytest

from rasa_hred.cli import build_parser
from rasa_hred.cli.corpus import stats_command
from rasa_hred.core.vocab import PAD, Vocabulary
from rasa_hred.corpora import (
    Corpus,
    CorpusError,
    corpus_stats,
    load_corpus,
    restricted_load,
    split_dialogues,
)
from rasa_hred.errors import UserError

# --- MovieTriples -------------------------------------------------------------------------

# Ids deliberately not in frequency order; <s>/</s> as in the real dictionary's layout.
DICT = [
    ("<unk>", 0, 10, 10),
    ("</s>", 1, 300, 100),
    ("<s>", 2, 300, 100),
    ("<person>", 3, 5, 5),
    ("<number>", 4, 5, 5),
    ("<continued_utterance>", 5, 1, 1),
    ("hello", 6, 20, 10),
    ("how", 7, 20, 10),
    ("are", 8, 20, 10),
    ("you", 9, 20, 10),
    ("?", 10, 20, 10),
    ("fine", 11, 20, 10),
    (".", 12, 20, 10),
    ("i", 13, 20, 10),
    ("'", 14, 20, 10),
    ("m", 15, 20, 10),
    (",", 16, 20, 10),
    ("good", 17, 20, 10),
]
W = {word: token_id for word, token_id, _, _ in DICT}


def _triple(*utterances: str) -> list[int]:
    ids: list[int] = []
    for utterance in utterances:
        ids += [W["<s>"], *(W[word] for word in utterance.split()), W["</s>"]]
    return ids


def _write_pickle(path: Path, data: object, protocol: int = 2) -> Path:
    with open(path, "wb") as file:
        pickle.dump(data, file, protocol=protocol)
    return path


@pytest.fixture
def movietriples(tmp_path) -> Path:
    directory = tmp_path / "MovieTriples"
    directory.mkdir()
    _write_pickle(directory / "Training.dict.pkl", DICT)
    train = [
        _triple("hello <person> .", "hello , how are you ?", "i ' m fine ."),
        _triple("how are you ?", "good .", "<unk> <number> ?"),
        _triple("hello", "", "hello"),  # an empty utterance is dropped: 2 remain
        _triple("hello"),  # one utterance: skipped
    ]
    _write_pickle(directory / "Training.triples.pkl", train)
    _write_pickle(directory / "Validation.triples.pkl", [_triple("good ?", "fine .", "good .")])
    _write_pickle(directory / "Test.triples.pkl", [_triple("you ?", "i ' m good", "fine")])
    return directory


def test_movietriples_loader(movietriples):
    corpus = load_corpus(str(movietriples))
    assert corpus.train == [
        ["hello <person> .", "hello , how are you ?", "i ' m fine ."],
        ["how are you ?", "good .", "<unk> <number> ?"],
        ["hello", "hello"],
    ]
    assert corpus.validation == [["good ?", "fine .", "good ."]]
    assert corpus.split("valid") is corpus.validation
    assert corpus.test == [["you ?", "i ' m good", "fine"]]
    assert corpus.vocabulary is not None
    assert corpus.vocabulary.id_of("hello") == 6 and corpus.vocabulary.eos_id == 1
    assert corpus.vocabulary.tokens[-1] == PAD
    assert sum(corpus.skipped.values()) == 1
    assert "Training.triples.pkl" in next(iter(corpus.skipped))
    # the prefix form and a path to one of the pickles work too
    assert load_corpus(f"movietriples:{movietriples}").train == corpus.train
    assert load_corpus(str(movietriples / "Training.triples.pkl")).test == corpus.test


def test_movietriples_missing_split_file(movietriples):
    (movietriples / "Validation.triples.pkl").unlink()
    with pytest.raises(CorpusError, match=r"Validation\.triples\.pkl"):
        load_corpus(f"movietriples:{movietriples}")


def test_movietriples_id_outside_dictionary(movietriples):
    records = [_triple("hello", "fine"), [*_triple("hello", "fine"), 18]]
    _write_pickle(movietriples / "Test.triples.pkl", records)
    with pytest.raises(CorpusError, match=r"Test\.triples\.pkl: record 1: word id 18") as info:
        load_corpus(str(movietriples))
    assert "outside" in str(info.value)


def test_movietriples_bad_record(movietriples):
    _write_pickle(movietriples / "Test.triples.pkl", [_triple("hello", "fine"), "text"])
    with pytest.raises(CorpusError, match=r"Test\.triples\.pkl: record 1"):
        load_corpus(str(movietriples))


# --- restricted unpickler -----------------------------------------------------------------


class _Malicious:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


def test_restricted_load_refuses_globals(tmp_path, movietriples):
    target = tmp_path / "pwned.txt"
    payload = pickle.dumps([_Malicious(target)])
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(CorpusError, match=r"refuses to unpickle (posix|nt|os)\.system") as info:
        restricted_load(path)
    assert str(path) in str(info.value)
    assert not target.exists()
    # as a corpus file, through the loader
    (movietriples / "Training.dict.pkl").write_bytes(payload)
    with pytest.raises(CorpusError, match="refuses to unpickle") as info:
        load_corpus(str(movietriples))
    assert "Training.dict.pkl" in str(info.value)
    assert not target.exists()


def test_restricted_load_plain_data_and_streams():
    data = [("w", 1, 2.5, "x"), [1, 2, 3], {"a": None}, True, -(2**70)]
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        assert restricted_load(io.BytesIO(pickle.dumps(data, protocol=protocol))) == data
    assert restricted_load(io.BytesIO(pickle.dumps([b"raw"], protocol=4))) == [b"raw"]
    with pytest.raises(CorpusError, match=r"refuses to unpickle (__builtin__|builtins)\.set"):
        restricted_load(io.BytesIO(pickle.dumps({1, 2}, protocol=2)))


def test_restricted_load_truncated_and_corrupt(tmp_path):
    path = _write_pickle(tmp_path / "Training.triples.pkl", [[1, 2, 3]] * 50)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CorpusError, match="truncated") as info:
        restricted_load(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(CorpusError, match="corrupt") as info:
        restricted_load(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"")
    with pytest.raises(CorpusError, match=r"Training\.triples\.pkl"):
        restricted_load(path)
    with pytest.raises(CorpusError, match="no such file"):
        restricted_load(tmp_path / "missing.pkl")


def test_movietriples_truncated_triples(movietriples):
    path = movietriples / "Training.triples.pkl"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorpusError, match=r"Training\.triples\.pkl"):
        load_corpus(str(movietriples))


# --- text form ----------------------------------------------------------------------------


def test_text_form_tabs_and_eos_markers(tmp_path):
    path = tmp_path / "dialogues.txt"
    path.write_text(
        "Hello there!\tHi. How are you?\tI'm fine.\n"
        "<s> what is 2 + 2 ? </s> <s> it ' s 4 </s>\n"
        "\n"
        "only one utterance\n"
        "a </s> b </s> c\tD\r\n",
        encoding="utf-8",
    )
    corpus = load_corpus(f"text:{path}", fractions=(1.0, 0.0, 0.0))
    dialogues = corpus.train + corpus.validation + corpus.test
    assert sorted(dialogues) == sorted(
        [
            ["hello there !", "hi . how are you ?", "i ' m fine ."],
            ["what is <number> + <number> ?", "it ' s <number>"],
            ["a", "b", "c", "d"],
        ]
    )
    assert list(corpus.skipped.values()) == [1]
    assert str(path) in next(iter(corpus.skipped))
    # detected by suffix without prefix; .tsv and .dialogues too
    tsv = tmp_path / "d.tsv"
    tsv.write_bytes(path.read_bytes())
    tsv_corpus = load_corpus(str(tsv))
    assert sorted(tsv_corpus.train + tsv_corpus.validation + tsv_corpus.test) == sorted(dialogues)


def test_text_form_not_utf8(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello\tthere\nok\tcaf\xe9 time\n")
    with pytest.raises(CorpusError, match=r"bad\.txt: line 2: not valid UTF-8 \(byte offset 18\)"):
        load_corpus(str(path))


def test_text_keep_numbers(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("it costs 3.5\tno, 1,000\n", encoding="utf-8")
    corpus = load_corpus(str(path), map_numbers=False)
    assert corpus.train == [["it costs 3.5", "no , 1,000"]]


# --- chatterbot ---------------------------------------------------------------------------


def test_chatterbot_yaml_file(tmp_path):
    path = tmp_path / "greetings.yml"
    path.write_text(
        "categories:\n- greetings\n"
        "conversations:\n"
        "- - Hello\n  - Hi there!\n  - How are you doing?\n"
        "- - What is 2 + 2?\n  - 4\n"
        "- - yes\n  - no\n"
        "- - lonely\n"
        "- A string where a list was meant\n",
        encoding="utf-8",
    )
    corpus = load_corpus(f"chatterbot:{path}")
    dialogues = corpus.train + corpus.validation + corpus.test
    assert sorted(dialogues) == sorted(
        [
            ["hello", "hi there !", "how are you doing ?"],
            ["what is <number> + <number> ?", "<number>"],
            ["yes", "no"],  # not turned into booleans
        ]
    )
    assert sum(corpus.skipped.values()) == 2
    assert corpus.validation  # 3 dialogues: validation is never empty
    # detected by content without prefix
    assert load_corpus(str(path)).train == corpus.train


def test_chatterbot_directory(tmp_path):
    (tmp_path / "a.yml").write_text("conversations:\n- [hi, hello]\n", encoding="utf-8")
    (tmp_path / "b.yaml").write_text("conversations:\n- [bye, see you]\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    corpus = load_corpus(f"chatterbot:{tmp_path}")
    assert sorted(corpus.train + corpus.validation) == [["bye", "see you"], ["hi", "hello"]]


def test_chatterbot_english_package():
    corpus = load_corpus("chatterbot:english")
    total = len(corpus.train) + len(corpus.validation) + len(corpus.test)
    assert total > 1000
    assert corpus.validation and corpus.test
    assert all(len(dialogue) >= 2 for dialogue in corpus.train)
    assert "chatterbot:english" in corpus.sources[0]


def test_chatterbot_unknown_language():
    with pytest.raises(CorpusError, match="klingon") as info:
        load_corpus("chatterbot:klingon")
    assert "english" in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("conversations: hello\n", "'conversations' must be a list"),
        ("conversations:\n- {a: b}\n", "conversation 0: expected a list"),
        ("conversations:\n- - [nested, list]\n  - x\n", "conversation 0, entry 0"),
        ("categories: [x]\n", "conversations"),
        ("- just\n- a list\n", "conversations"),
        ("conversations: [unclosed\n", "invalid YAML"),
    ],
)
def test_chatterbot_wrong_structure(tmp_path, content, message):
    path = tmp_path / "bad.yml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusError, match=message) as info:
        load_corpus(f"chatterbot:{path}")
    assert str(path) in str(info.value)


def test_yaml_not_utf8(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_bytes(b"conversations:\n- - caf\xe9\n  - ok\n")
    with pytest.raises(CorpusError, match=r"bad\.yml: line 2: not valid UTF-8"):
        load_corpus(str(path))


# --- Rasa stories -------------------------------------------------------------------------

STORIES = """\
version: "3.1"
stories:
- story: greet and chat
  steps:
  - user: |
      Hello there
    intent: greet
  - user: how are you?
  - action: utter_greet
  - bot: I'm fine, thanks!
  - bot: And you?
  - user: 'great, I''m in [Berlin](city) with [Ann]{"entity": "name"}'
- story: intents only
  steps:
  - intent: greet
  - action: utter_greet
- story: one text turn
  steps:
  - user: hi
  - action: utter_greet
rules:
- rule: say bye
  steps:
  - user: bye
  - bot: Goodbye!
"""


def test_rasa_stories(tmp_path):
    path = tmp_path / "stories.yml"
    path.write_text(STORIES, encoding="utf-8")
    corpus = load_corpus(f"rasa:{path}", fractions=(1.0, 0.0, 0.0))
    dialogues = corpus.train + corpus.validation + corpus.test
    assert dialogues == [
        [
            "hello there how are you ?",
            "i ' m fine , thanks ! and you ?",
            "great , i ' m in berlin with ann",
        ],
        ["bye", "goodbye !"],
    ]
    assert sum(corpus.skipped.values()) == 2
    assert all(str(path) in reason for reason in corpus.skipped)
    # detected by content
    assert load_corpus(str(path), fractions=(1.0, 0.0, 0.0)).train == corpus.train


def test_rasa_directory_passes_over_other_yaml(tmp_path):
    (tmp_path / "stories.yml").write_text(STORIES, encoding="utf-8")
    (tmp_path / "nlu.yml").write_text("nlu:\n- intent: greet\n  examples: '- hi'\n", "utf-8")
    corpus = load_corpus(str(tmp_path))
    assert len(corpus.train) + len(corpus.validation) == 2
    assert any("nlu.yml" in reason for reason in corpus.skipped)


def test_rasa_wrong_structure(tmp_path):
    path = tmp_path / "stories.yml"
    path.write_text("stories:\n- story: x\n  steps: hello\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"stories\.yml: story 0 \('x'\): 'steps' must be"):
        load_corpus(f"rasa:{path}")
    path.write_text("stories:\n- story: x\n  steps:\n  - just text\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"story 0 \('x'\), step 0"):
        load_corpus(str(path))
    path.write_text("conversations: []\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="stories"):
        load_corpus(f"rasa:{path}")


# --- combination, splits, errors ----------------------------------------------------------


def _text_file(path: Path, count: int) -> Path:
    names = [str(i).translate(str.maketrans("0123456789", "abcdefghij")) for i in range(count)]
    path.write_text("".join(f"question {n}\tanswer {n}\n" for n in names), encoding="utf-8")
    return path


def test_split_deterministic_by_seed(tmp_path):
    path = _text_file(tmp_path / "d.txt", 40)
    first = load_corpus(str(path), seed=1)
    again = load_corpus(str(path), seed=1)
    other = load_corpus(str(path), seed=2)
    assert (first.train, first.validation, first.test) == (
        again.train,
        again.validation,
        again.test,
    )
    assert first.train != other.train
    assert (len(first.train), len(first.validation), len(first.test)) == (36, 2, 2)
    everything = first.train + first.validation + first.test
    assert sorted(everything) == sorted(other.train + other.validation + other.test)
    assert len({tuple(d) for d in everything}) == 40


@pytest.mark.parametrize(
    ("count", "sizes"), [(1, (1, 0, 0)), (2, (1, 1, 0)), (3, (1, 1, 1)), (4, (2, 1, 1))]
)
def test_split_small_corpora_keep_validation(count, sizes):
    dialogues = [[f"q{i}", f"a{i}"] for i in range(count)]
    train, valid, test = split_dialogues(dialogues, seed=0)
    assert (len(train), len(valid), len(test)) == sizes


def test_split_bad_fractions():
    with pytest.raises(CorpusError, match="sum to 1"):
        split_dialogues([], fractions=(0.5, 0.1, 0.1))
    with pytest.raises(CorpusError, match="non-negative"):
        split_dialogues([], fractions=(1.1, -0.1, 0.0))


def test_combine_specs(tmp_path, movietriples):
    text = _text_file(tmp_path / "d.txt", 20)
    chatter = tmp_path / "c.yml"
    chatter.write_text("conversations:\n- [hi, hello]\n- [bye, ciao]\n", encoding="utf-8")
    corpus = load_corpus([str(movietriples), str(text), f"chatterbot:{chatter}"], seed=3)
    mt = load_corpus(str(movietriples))
    pooled = load_corpus([str(text), str(chatter)], seed=3)
    # MovieTriples keeps its splits; the rest is pooled and split by seed
    assert corpus.train == mt.train + pooled.train
    assert corpus.validation == mt.validation + pooled.validation
    assert corpus.test == mt.test + pooled.test
    assert corpus.vocabulary == mt.vocabulary
    assert len(corpus.sources) == 3
    assert sum(corpus.skipped.values()) == 1


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.txt"
    for spec in (str(missing), f"text:{missing}", f"rasa:{missing}", f"movietriples:{missing}"):
        with pytest.raises(CorpusError, match="no such file") as info:
            load_corpus(spec)
        assert str(missing) in str(info.value)


def test_unknown_format(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="unknown corpus format") as info:
        load_corpus(str(path))
    assert str(path) in str(info.value)
    with pytest.raises(CorpusError, match="unknown format 'json'"):
        load_corpus("json:whatever")
    with pytest.raises(CorpusError, match="no YAML or text"):
        (tmp_path / "empty").mkdir()
        load_corpus(str(tmp_path / "empty"))


def test_empty_corpus(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("one\ntwo\n\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="empty corpus") as info:
        load_corpus(str(path))
    assert "fewer than 2 utterances: 2" in str(info.value)
    assert str(path) in str(info.value)
    with pytest.raises(CorpusError, match="no corpus spec"):
        load_corpus([])


def test_errors_are_user_errors():
    assert issubclass(CorpusError, UserError)
    with pytest.raises(UserError, match="unknown split"):
        Corpus([], [], []).split("dev")


# --- statistics ---------------------------------------------------------------------------


def test_corpus_stats():
    corpus = Corpus(
        train=[["a b c", "a b"], ["a", "d e f g", "a"]],
        validation=[["a z", "b"]],
        test=[],
        skipped={"x: dialogue with fewer than 2 utterances": 2},
        sources=["text:x"],
    )
    stats = corpus_stats(corpus, vocab_size=2)  # vocabulary: a, b (+ specials)
    train = stats["splits"]["train"]
    assert (train["dialogues"], train["utterances"], train["tokens"]) == (2, 5, 11)
    assert train["coverage"] == pytest.approx(6 / 11)
    assert train["utterance_length"] == {"p50": 2, "p90": 4, "p99": 4, "max": 4}
    assert train["mean_turns"] == pytest.approx(2.5)
    valid = stats["splits"]["validation"]
    assert valid["coverage"] == pytest.approx(2 / 3)
    assert stats["splits"]["test"]["tokens"] == 0 and stats["splits"]["test"]["coverage"] == 0
    assert stats["skipped_total"] == 2
    json.dumps(stats)


def test_corpus_stats_with_own_vocabulary(movietriples):
    corpus = load_corpus(str(movietriples))
    stats = corpus_stats(corpus)
    assert stats["splits"]["train"]["corpus_vocabulary_coverage"] == pytest.approx(1.0)
    assert stats["corpus_vocabulary_size"] == len(corpus.vocabulary)


def test_stats_command(tmp_path, capsys):
    path = _text_file(tmp_path / "d.txt", 20)
    (tmp_path / "d.txt").open("a", encoding="utf-8").write("lonely\n")
    args = build_parser().parse_args(["corpus", "stats", str(path), "--vocab-size", "100"])
    assert stats_command(args) == 0
    out = capsys.readouterr().out
    assert "train" in out and "validation" in out and "test" in out
    assert "skipped: 1" in out and "fewer than 2 utterances" in out
    args.json = True
    assert stats_command(args) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["splits"]["train"]["dialogues"] == 18
    assert stats["skipped_total"] == 1
    args.vocab_size = -1
    with pytest.raises(UserError, match="vocab-size"):
        stats_command(args)


def test_vocabulary_from_corpus_train():
    corpus = Corpus(train=[["a b", "b c"]], validation=[], test=[])
    vocab = Vocabulary.build(u.split() for d in corpus.train for u in d)
    assert vocab.tokens[7:] == ["b", "a", "c"]


def test_a_specs_split_does_not_depend_on_the_specs_it_is_combined_with(tmp_path):
    first = _text_file(tmp_path / "first.txt", 40)
    second = tmp_path / "second.txt"
    second.write_text("".join(f"hello {n}\tworld {n}\n" for n in "abcdefghijklmnopqrst"))
    alone = [load_corpus(str(path), seed=3) for path in (first, second)]
    combined = load_corpus([str(first), str(second)], seed=3)
    for split in ("train", "validation", "test"):
        assert combined.split(split) == alone[0].split(split) + alone[1].split(split)
    assert combined.test and alone[1].test
