"""Tokenizer, detokenizer and Vocabulary."""

from __future__ import annotations

import json
import pickle
import random
import unicodedata

import pytest

from rasa_hred.core import vocab as vocab_module
from rasa_hred.core.vocab import (
    BOS,
    CONTINUED,
    EOS,
    NUMBER,
    PAD,
    PERSON,
    PLACEHOLDERS,
    SPECIAL_TOKENS,
    UNK,
    Vocabulary,
    detokenize,
    tokenize,
)
from rasa_hred.corpora import CorpusError, load_movietriples_dict
from rasa_hred.errors import UserError

# --- tokenize -----------------------------------------------------------------------------


def test_special_tokens_constants():
    assert SPECIAL_TOKENS == ("<pad>", "<unk>", "<s>", "</s>", PERSON, NUMBER, CONTINUED)
    assert PLACEHOLDERS == ("<person>", "<number>", "<continued_utterance>")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I'm fine.", "i ' m fine ."),
        ("Don't!", "don ' t !"),
        ("You're here, aren't you?", "you ' re here , aren ' t you ?"),
        ("I can't; we'll see: (maybe)", "i can ' t ; we ' ll see : ( maybe )"),
        ("Hello,world...", "hello , world . . ."),
        ("  lots \t of\n\nspace  ", "lots of space"),
    ],
)
def test_tokenize_contractions_and_punctuation(text, expected):
    assert tokenize(text) == expected.split()


def test_tokenize_unicode_quotes_and_normalisation():
    assert tokenize("I\u2019m \u201cfine\u201d") == ["i", "'", "m", '"', "fine", '"']
    assert tokenize("don\u2018t `quote\u00b4") == ["don", "'", "t", "'", "quote", "'"]
    # NFKC: ligatures and full-width letters become plain ones; zero-width space dropped
    assert tokenize("\ufb01ne \uff28\uff29 a\u200bb") == ["fine", "hi", "ab"]
    # combining marks stay inside their word (decomposed accents, Devanagari vowel signs)
    assert tokenize("cafe\u0301 \u0939\u093f\u0902\u0926\u0940") == ["café", "हिंदी"]


def test_tokenize_numbers():
    text = "In 2002 it cost 3.5 or 1,000 dollars, not 2nd or mp3."
    mapped = "in <number> it cost <number> or <number> dollars , not 2nd or mp3 ."
    assert tokenize(text) == mapped.split(" ")
    kept = "in 2002 it cost 3.5 or 1,000 dollars , not 2nd or mp3 ."
    assert tokenize(text, map_numbers=False) == kept.split(" ")


def test_tokenize_placeholders_stay_whole():
    text = "Hi <person>, <continued_utterance> it is <number> <unk>"
    assert tokenize(text) == ["hi", PERSON, ",", CONTINUED, "it", "is", NUMBER, UNK]
    # markers are not words: in text they are split up
    assert tokenize("<s> x </s>") == ["<", "s", ">", "x", "<", "/", "s", ">"]


@pytest.mark.parametrize("text", ["", "   ", "\t\n", "\u200b"])
def test_tokenize_empty(text):
    assert tokenize(text) == []


def test_tokenize_idempotent_on_examples():
    for text in [
        "I'm fine. How are you?",
        "<person> ' s car costs $3.5 , isn't it",
        "1,000,000 reasons: 1.5x faster",
        "İstanbul ﬁne ℌ — « quoted » …",
        "already tokenized : don ' t <number> .",
    ]:
        for map_numbers in (True, False):
            tokens = tokenize(text, map_numbers=map_numbers)
            assert tokenize(" ".join(tokens), map_numbers=map_numbers) == tokens


def test_tokenize_idempotent_fuzz():
    pool = [
        *"abcXYZ019 .,'\"!?-_<>/$()\t",
        "\u2019",
        "\u201c",
        "\u00b4",
        "\u0301",
        "\u0130",
        "\ufb01",
        "\u200b",
        "\u0939",
        "\u093f",
        "\u00e9",
        "\u2026",
        "\u00bd",
        "<person>",
        "<number>",
        "<unk>",
    ]
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 25)))
        for map_numbers in (True, False):
            tokens = tokenize(text, map_numbers=map_numbers)
            assert all(token and " " not in token for token in tokens)
            assert tokenize(" ".join(tokens), map_numbers=map_numbers) == tokens, text


def test_tokenize_max_tokens_is_a_prefix():
    pool = ["hello", "I'm", "3.5", "<person>", "\u2019", "\ufdfa", "\u200b", ",", "  ", "x1"]
    rng = random.Random(1)
    for _ in range(500):
        text = " ".join(rng.choice(pool) for _ in range(rng.randint(0, 30)))
        tokens = tokenize(text)
        for n in (0, 1, 5, 50):
            assert tokenize(text, max_tokens=n) == tokens[:n], (text, n)


def test_tokenize_max_chars_bounds_the_text_before_and_after_nfkc():
    text = "Hello, World! " * 10
    assert tokenize(text, max_chars=14) == ["hello", ",", "world", "!"]
    assert tokenize(text, max_chars=len(text)) == tokenize(text)
    # U+FDFA is one character and 18 after NFKC: both are cut to max_chars
    assert tokenize("\ufdfa") == ["صلى", "الله", "عليه", "وسلم"]
    nfkc = unicodedata.normalize("NFKC", "\ufdfa" * 2)
    assert tokenize("\ufdfa" * 100_000, max_chars=20) == tokenize(nfkc[:20])


# --- detokenize ---------------------------------------------------------------------------


def test_detokenize_example():
    tokens = ["i", "'", "m", "fine", ".", "how", "are", "you", "?"]
    assert detokenize(tokens) == "i'm fine. how are you?"
    assert detokenize("i ' m fine . how are you ?") == "i'm fine. how are you?"
    assert detokenize(["don", "'", "t"]) == "don't"
    assert detokenize("we ' ll see , you ' re ok ; it ' s") == "we'll see, you're ok; it's"


def test_detokenize_brackets_and_quotes():
    assert detokenize('he said " what ( really ) ? " ok') == 'he said "what (really)?" ok'
    assert detokenize("wait . . . what !") == "wait... what!"


def test_detokenize_placeholders_dropped_by_default():
    assert detokenize("hello <person> , how are you ?") == "hello, how are you?"
    assert detokenize("<person> hi") == "hi"
    assert detokenize("it costs <number> dollars <continued_utterance>") == "it costs dollars"
    assert detokenize("<s> hi </s> <pad>") == "hi"
    assert detokenize([]) == ""
    assert detokenize("<person>") == ""


def test_detokenize_placeholders_replaced():
    text = detokenize(
        "hello <person> , it costs <number> .", placeholders={PERSON: "Ann", NUMBER: "5"}
    )
    assert text == "hello Ann, it costs 5."
    assert detokenize("hi <person>", placeholders={NUMBER: "5"}) == "hi"


def test_detokenize_never_pads():
    for text in [". hi", "hi (", "( hi", '" hi', "<person> . <person>"]:
        out = detokenize(text)
        assert out == out.strip()


# --- Vocabulary ---------------------------------------------------------------------------


def test_build_specials_first_and_deterministic_order():
    utterances = [["b", "a", "c"], ["a", "b"], ["a", "d"], "c b"]
    vocab = Vocabulary.build(utterances)
    assert vocab.tokens[:7] == list(SPECIAL_TOKENS)
    assert [vocab.id_of(t) for t in SPECIAL_TOKENS] == list(range(7))
    assert (vocab.pad_id, vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2, 3)
    # a:3, b:3 (tie -> alphabetical), c:2, d:1
    assert vocab.tokens[7:] == ["a", "b", "c", "d"]
    assert Vocabulary.build(list(reversed(utterances))).tokens == vocab.tokens
    assert vocab.frequencies is not None and vocab.frequencies[7:] == [3, 3, 2, 1]


def test_build_max_size_and_min_freq():
    utterances = [["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"]]
    assert Vocabulary.build(utterances, max_size=2).tokens[7:] == ["a", "b"]
    assert len(Vocabulary.build(utterances, max_size=2)) == 9
    assert Vocabulary.build(utterances, min_freq=2).tokens[7:] == ["a", "b", "c"]
    assert Vocabulary.build(utterances, max_size=None).tokens[7:] == ["a", "b", "c", "d"]
    assert Vocabulary.build(utterances, max_size=0).tokens == list(SPECIAL_TOKENS)


def test_build_counts_specials_without_duplicating_them():
    vocab = Vocabulary.build([["hi", PERSON], [PERSON, NUMBER]])
    assert vocab.tokens == [*SPECIAL_TOKENS, "hi"]
    assert vocab.frequencies[vocab.id_of(PERSON)] == 2


def test_encode_decode():
    vocab = Vocabulary.build([["hello", "world"]])
    ids = vocab.encode(["hello", "there", "world"])
    assert ids == [vocab.id_of("hello"), vocab.unk_id, vocab.id_of("world")]
    assert vocab.encode_text("Hello, world") == [
        vocab.id_of("hello"),
        vocab.unk_id,
        vocab.id_of("world"),
    ]
    full = [vocab.bos_id, *ids, vocab.eos_id, vocab.pad_id, vocab.id_of("world")]
    assert vocab.decode(full) == ["hello", UNK, "world"]
    assert vocab.decode(full, strip_special=False) == [
        BOS,
        "hello",
        UNK,
        "world",
        EOS,
        PAD,
        "world",
    ]
    assert "hello" in vocab and "there" not in vocab
    assert vocab.token_of(vocab.id_of("world")) == "world"
    with pytest.raises(IndexError):
        vocab.token_of(len(vocab))


def test_constructor_validation():
    with pytest.raises(ValueError, match="special"):
        Vocabulary(["a", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary([*SPECIAL_TOKENS, "a", "a"])
    with pytest.raises(ValueError, match="frequencies"):
        Vocabulary(list(SPECIAL_TOKENS), [1, 2])
    # specials may sit anywhere
    vocab = Vocabulary(["x", *reversed(SPECIAL_TOKENS)])
    assert vocab.pad_id == 7 and vocab.id_of("x") == 0


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.build([["b", "a"], ["a"]])
    path = tmp_path / "sub" / "vocab.json"
    vocab.save(path)
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["format"] == "rasa-hred-vocab" and payload["version"] == 1
    loaded = Vocabulary.load(path)
    assert loaded.tokens == vocab.tokens and loaded.frequencies == vocab.frequencies
    bare = Vocabulary([*SPECIAL_TOKENS, "é"])
    bare.save(tmp_path / "bare.json")
    assert Vocabulary.load(tmp_path / "bare.json").frequencies is None
    assert Vocabulary.load(tmp_path / "bare.json").tokens[-1] == "é"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"format": "something-else", "version": 1, "tokens": []}', "not a vocabulary"),
        (b"[1, 2]", "not a vocabulary"),
        (b'{"format": "rasa-hred-vocab", "version": 99, "tokens": []}', "version"),
        (b'{"format": "rasa-hred-vocab", "version": 1, "tokens": "abc"}', "tokens"),
        (b'{"format": "rasa-hred-vocab", "version": 1, "tokens": ["a"]}', "special"),
        (
            b'{"format": "rasa-hred-vocab", "version": 1, "tokens": [], "frequencies": "x"}',
            "frequencies",
        ),
    ],
)
def test_load_bad_files(tmp_path, content, message):
    path = tmp_path / "vocab.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)


def test_load_refuses_oversized_and_hostile_json(tmp_path, monkeypatch):
    path = tmp_path / "vocab.json"
    Vocabulary.build([["hello"]]).save(path)
    monkeypatch.setattr(vocab_module, "MAX_VOCAB_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(UserError, match=r"bytes, more than the limit of \d+") as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)
    monkeypatch.undo()
    assert len(Vocabulary.load(path)) == 8
    for content in (  # an integer past Python's 4300-digit limit; nesting past the stack
        b'{"format": "rasa-hred-vocab", "version": 1, "frequencies": [' + b"9" * 5000 + b"]}",
        b"[" * 100_000 + b"]" * 100_000,
    ):
        path.write_bytes(content)
        with pytest.raises(UserError, match="not a vocabulary file"):
            Vocabulary.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found") as info:
        Vocabulary.load(tmp_path / "nope.json")
    assert "nope.json" in str(info.value)
    with pytest.raises(UserError, match="directory"):
        Vocabulary.load(tmp_path)


# --- MovieTriples dictionary --------------------------------------------------------------


def _write_dict(path, entries, protocol=pickle.HIGHEST_PROTOCOL):
    with open(path, "wb") as file:
        pickle.dump(entries, file, protocol=protocol)
    return path


def test_movietriples_dict_keeps_ids(tmp_path):
    # ids NOT in frequency order, specials not first, some specials missing
    entries = [
        ("<unk>", 0, 50, 40),
        ("</s>", 1, 900, 300),
        ("<s>", 2, 900, 300),
        ("zebra", 3, 1, 1),
        ("the", 4, 500, 200),
        ("<person>", 5, 30, 20),
        ("apple", 6, 7, 5),
    ]
    path = _write_dict(tmp_path / "Training.dict.pkl", list(reversed(entries)), protocol=2)
    vocab = load_movietriples_dict(path)[0]
    for word, token_id, freq, _ in entries:
        assert vocab.id_of(word) == token_id
        assert vocab.frequencies[token_id] == freq
    assert (vocab.unk_id, vocab.eos_id, vocab.bos_id) == (0, 1, 2)
    # missing specials appended after the highest id, in SPECIAL_TOKENS order, frequency 0
    assert vocab.tokens[7:] == [PAD, NUMBER, CONTINUED]
    assert vocab.frequencies[7:] == [0, 0, 0]
    assert vocab.decode([2, 4, 3, 1, 6]) == ["the", "zebra"]
    assert load_movietriples_dict(path)[1] == 7


def test_movietriples_dict_python2_pickle(tmp_path):
    # What cPickle.dump(..., 2) writes on Python 2: str words as SHORT_BINSTRING (bytes).
    def entry(word: bytes, token_id: int) -> bytes:
        return b"(U" + bytes([len(word)]) + word + b"K" + bytes([token_id]) + b"K\x01K\x01t"

    body = entry(b"<unk>", 0) + entry(b"<s>", 1) + entry(b"</s>", 2) + entry(b"caf\xc3\xa9", 3)
    path = tmp_path / "Training.dict.pkl"
    path.write_bytes(b"\x80\x02](" + body + b"e.")
    vocab = load_movietriples_dict(path)[0]
    assert vocab.tokens[:4] == ["<unk>", "<s>", "</s>", "café"]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([("<unk>", 0, 1, 1), ("a", 2, 1, 1)], "contiguous"),
        ([("<unk>", 1, 1, 1), ("a", 2, 1, 1)], "contiguous"),
        ([("<unk>", 0, 1, 1), ("a", 0, 1, 1)], "already belongs"),
        ([("<unk>", 0, 1, 1), ("<unk>", 1, 1, 1)], "twice"),
        ([("<unk>", "0", 1, 1)], "integer"),
        ([("<unk>",)], "tuple"),
        ({"a": 1}, "list"),
        ([], "empty"),
    ],
)
def test_movietriples_dict_errors(tmp_path, entries, message):
    path = _write_dict(tmp_path / "Training.dict.pkl", entries)
    with pytest.raises(CorpusError, match=message) as info:
        load_movietriples_dict(path)[0]
    assert str(path) in str(info.value)


def test_movietriples_dict_missing_or_truncated(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_movietriples_dict(tmp_path / "Training.dict.pkl")[0]
    path = _write_dict(tmp_path / "Training.dict.pkl", [("<unk>", 0, 1, 1)] * 3)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(CorpusError, match=r"Training\.dict\.pkl"):
        load_movietriples_dict(path)[0]
