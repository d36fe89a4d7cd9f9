"""Hostile corpus files (issue 14, part 5): every crafted input is built here, tiny, and must
be refused with a clean ``CorpusError`` naming the file, at a bounded cost.

Costs before the bounds, for the record: a 3.8 KB chatterbot alias bomb ran 107 s (122 MB of
text by reference); the 9-byte memo pickle took 2.1 GB; 1 MB of TUPLE1 opcodes under a dict
key crashed Python (segmentation fault).
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rasa_hred.corpora import CorpusError, load_corpus, restricted_load
from rasa_hred.corpora import base as corpora_base
from rasa_hred.corpora.base import merge_turns, read_bytes, shown

MB = 1024 * 1024


@contextmanager
def bounded(seconds: float, peak_bytes: int) -> Iterator[None]:
    """Assert that the block ran within ``seconds`` (a hang guard) and ``peak_bytes`` of
    Python allocations (tracemalloc sees the unpickler's memo and every object built)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        took = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"{took * 1e3:.1f} ms, peak {peak / MB:.1f} MB")
    assert took < seconds and peak < peak_bytes, (took, peak)


def refused(call: Callable[[], object], match: str, path: Path | None = None) -> str:
    with pytest.raises(CorpusError, match=match) as info:
        call()
    message = str(info.value)
    if path is not None:
        assert str(path) in message
    assert len(message) < 500  # a bounded message, whatever the input held
    return message


# --- YAML ---------------------------------------------------------------------------------


def alias_bomb(text_bytes: int, per_list: int, top: str) -> str:
    """A text, a list naming it ``per_list`` times, and ``top`` naming that list as often:
    about 3.8 KB for ``text_bytes * per_list**2`` bytes of text by reference."""
    aliases = ", ".join(["*c"] * per_list)
    return (
        f's: &s "{"lol " * (text_bytes // 4)}"\n'
        f"c: &c [{', '.join(['*s'] * per_list)}]\n" + top.format(aliases=aliases)
    )


def test_a_chatterbot_alias_bomb_is_refused_at_once(tmp_path):
    path = tmp_path / "bomb.yml"
    path.write_text(alias_bomb(1000, 350, "conversations: [{aliases}]\n"))
    assert path.stat().st_size < 4000  # 122 MB of text by reference
    with bounded(seconds=1.0, peak_bytes=20 * MB):
        message = refused(lambda: load_corpus(f"chatterbot:{path}"), "alias", path)
    assert "line 1, column 4" in message  # where the repeated node is anchored


def test_a_stories_alias_bomb_is_refused_at_once(tmp_path):
    path = tmp_path / "stories.yml"
    steps = "stories:\n- story: bomb\n  steps: [{aliases}]\n"
    path.write_text(alias_bomb(1000, 300, steps).replace("[*s", "[{user: *s}").replace(", *s", ""))
    with bounded(seconds=1.0, peak_bytes=20 * MB):
        refused(lambda: load_corpus(str(path)), "alias", path)
    path.write_text("a: &a [*a]\nconversations: *a\n")  # a recursive alias
    refused(lambda: load_corpus(str(path)), "alias", path)


def test_an_anchor_without_alias_is_harmless_and_accepted(tmp_path):
    path = tmp_path / "anchored.yml"
    path.write_text("conversations:\n- &first [hello there, hi how are you]\n- [a b, c d]\n")
    assert load_corpus(str(path), fractions=(1, 0, 0)).train != []


def test_deep_yaml_nesting_is_a_clean_error(tmp_path):
    path = tmp_path / "deep.yml"
    for depth in (500, 100_000):  # past Python's recursion limit; past libyaml's own limit
        path.write_text("conversations: " + "[" * depth + "]" * depth + "\n")
        refused(lambda: load_corpus(f"chatterbot:{path}"), "nested too deeply|nesting", path)


def test_oversized_files_are_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.yml"
    path.write_text("conversations:\n- [hello there, hi]\n" * 100)
    monkeypatch.setattr(corpora_base, "MAX_YAML_FILE_BYTES", 1000)
    refused(lambda: load_corpus(str(path)), r"has 3500 bytes.*limit of 1000 bytes", path)
    text = tmp_path / "big.txt"
    text.write_bytes(b"hello\tthere\n" * 100)
    refused(lambda: read_bytes(text, limit=1000), "limit of 1000 bytes", text)
    # a device or pipe has no size: reading stops at the limit
    with bounded(seconds=1.0, peak_bytes=5 * MB):
        refused(lambda: read_bytes(Path("/dev/zero"), limit=MB), "more bytes than the limit")
    assert read_bytes(text, limit=1200) == text.read_bytes()


# --- Rasa stories merging -----------------------------------------------------------------


def test_merging_a_long_run_of_one_speaker_is_linear():
    turns = [("user", "ab")] * 200_000 + [("bot", "hi"), ("bot", "there"), ("user", "x")]
    start = time.perf_counter()
    merged = merge_turns(turns)
    took = time.perf_counter() - start
    assert merged == [("user", " ".join(["ab"] * 200_000)), ("bot", "hi there"), ("user", "x")]
    assert took < 1.0  # joined once: milliseconds (concatenated turn by turn: seconds)
    assert merge_turns([]) == []


def test_a_200_kb_stories_file_loads_in_seconds(tmp_path):
    path = tmp_path / "stories.yml"
    lines = ["stories:", "- story: long", "  steps:"]
    lines += ["  - user: hello there"] * 10_000 + ["  - bot: hi", "  - user: bye"]
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 200_000
    start = time.perf_counter()
    corpus = load_corpus(str(path), fractions=(1, 0, 0))
    assert time.perf_counter() - start < 10.0  # hang guard
    (dialogue,) = corpus.train
    assert dialogue == [" ".join(["hello there"] * 10_000), "hi", "bye"]


# --- pickles ------------------------------------------------------------------------------


def test_the_nine_byte_memo_pickle_is_refused_in_little_memory(tmp_path):
    path = tmp_path / "Training.triples.pkl"
    path.write_bytes(b"\x80\x02]r\xff\xff\xff\x07.")  # LONG_BINPUT 2**27 - 1: 2.1 GB before
    with bounded(seconds=1.0, peak_bytes=100 * MB):
        refused(lambda: restricted_load(path), r"memo index 134217727 at byte 3", path)
    path.write_bytes(b"\x80\x02]p99999999\n.")  # the protocol 0 PUT: 1.6 GB before
    with bounded(seconds=1.0, peak_bytes=100 * MB):
        refused(lambda: restricted_load(path), "memo index 99999999", path)
    path.write_bytes(b"]p" + b"9" * 5000 + b"\n.")  # an index of 5000 digits
    refused(lambda: restricted_load(path), "memo index", path)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x02X\xff\xff\xff\x7fabc.",  # BINUNICODE of 2 GB, 3 bytes present
        b"\x80\x04\x8d" + (2**40).to_bytes(8, "little") + b"abc.",  # BINUNICODE8
        b"\x80\x04\x96" + (2**31).to_bytes(8, "little") + b"abc.",  # BYTEARRAY8
        b"\x80\x04\x95" + (2**40).to_bytes(8, "little") + b"N.",  # FRAME
        b"\x80\x02]q\x00(K\x01T\xff\xff\xff\x7fabc.",  # BINSTRING after a few opcodes
    ],
    ids=["binunicode", "binunicode8", "bytearray8", "frame", "binstring"],
)
def test_lengths_past_the_end_of_the_file_are_refused(tmp_path, payload):
    path = tmp_path / "Training.dict.pkl"
    path.write_bytes(payload)
    with bounded(seconds=1.0, peak_bytes=20 * MB):
        refused(lambda: restricted_load(path), "truncated or corrupt pickle", path)


def test_records_sharing_one_list_are_refused(tmp_path, movietriples_dir):
    record = [2, 6, 1, 2, 7, 1]  # <s> hello </s> <s> how </s>
    path = movietriples_dir / "Training.triples.pkl"
    # 100k references to one record: 2 bytes each, 600k ids to walk (a 1 MB file: billions)
    path.write_bytes(pickle.dumps([record] * 100_000, protocol=2))
    with bounded(seconds=2.0, peak_bytes=20 * MB):
        refused(lambda: load_corpus(str(movietriples_dir)), "record 1 is a reference", path)


@pytest.fixture
def movietriples_dir(tmp_path) -> Path:
    directory = tmp_path / "mt"
    directory.mkdir()
    words = ["<unk>", "</s>", "<s>", "<person>", "<number>", "<continued_utterance>", "hi", "x"]
    entries = [(word, i, 1, 1) for i, word in enumerate(words)]
    (directory / "Training.dict.pkl").write_bytes(pickle.dumps(entries, protocol=2))
    for name in ("Training", "Validation", "Test"):
        triples = [[2, 6, 1, 2, 7, 1]]
        (directory / f"{name}.triples.pkl").write_bytes(pickle.dumps(triples, protocol=2))
    return directory


def test_deep_tuples_under_a_dict_are_refused_not_a_crash(tmp_path):
    # A dict key of tuples nested a million deep: C's tuple hash recursed until it crashed.
    path = tmp_path / "Training.dict.pkl"
    path.write_bytes(b"\x80\x02}N" + b"\x85" * 1_000_000 + b"Ns.")
    code = (
        "import sys; from rasa_hred.corpora import CorpusError, restricted_load\n"
        "try: restricted_load(sys.argv[1])\n"
        "except CorpusError as error: print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]  # -11 before: a segmentation fault
    assert "nested more than 1000 deep" in done.stdout and str(path) in done.stdout


def test_plain_data_within_the_bounds_still_loads():
    nested: object = "leaf"
    for _ in range(900):
        nested = (nested,)
    data = [{nested: 1, (1, 2): "v"}, [[[[]]]], ("w", 1, 2.5, b"x"), -(2**70)]
    for protocol in range(3, pickle.HIGHEST_PROTOCOL + 1):  # bytes need protocol 3
        assert restricted_load(io.BytesIO(pickle.dumps(data, protocol=protocol))) == data
    sets = [{(1, 2): frozenset({(3, 4)})}, {5, 6}]  # a global (refused) before protocol 4
    assert restricted_load(io.BytesIO(pickle.dumps(sets, protocol=4))) == sets
    # memo references (GET) to one list are fine where they are not MovieTriples records
    shared = [1, 2, 3]
    assert restricted_load(io.BytesIO(pickle.dumps([shared, shared]))) == [shared, shared]


def test_values_quoted_in_errors_are_bounded(tmp_path, movietriples_dir):
    path = movietriples_dir / "Training.dict.pkl"
    for entry, match in [
        (("w" * MB,), r"entry 0: expected .* got \('wwww"),
        (("w", 10**5000, 1, 1), "ids range <a 16610-bit integer>"),
    ]:
        path.write_bytes(pickle.dumps([entry], protocol=2))
        refused(lambda: load_corpus(str(movietriples_dir)), match, path)
    # lists nested 100k deep (pickle.dumps itself cannot write them): EMPTY_LISTs, APPENDs
    path.write_bytes(b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".")
    match = r"entry 0: expected .* got \[\[\[\[...\]\]\]\]"
    refused(lambda: load_corpus(str(movietriples_dir)), match, path)
    assert shown("x" * MB) == "'" + "x" * 27 + "..." + "x" * 28 + "'"
    assert shown(10**5000) == "<a 16610-bit integer>"
