"""MovieTriples (Serban et al., 2016): ``*.triples.pkl`` id lists and the ``Training.dict.pkl``
dictionary, read with an unpickler that builds plain data only (``rasa_hred.corpora.pickles``).

The corpus keeps its own train/validation/test splits and brings its own dictionary, whose
ids are kept exactly (the special tokens it lacks are appended).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from rasa_hred.core.vocab import BOS, EOS, PAD, SPECIAL_TOKENS, Vocabulary, tokenize
from rasa_hred.corpora.base import CorpusError, Dialogue, DialogueCollector, shown
from rasa_hred.corpora.pickles import restricted_load

SPLIT_FILES = {
    "train": "Training.triples.pkl",
    "validation": "Validation.triples.pkl",
    "test": "Test.triples.pkl",
}
DICT_FILE = "Training.dict.pkl"

# --- the dictionary -----------------------------------------------------------------------


def load_movietriples_dict(path: str | Path) -> tuple[Vocabulary, int]:
    """Import a MovieTriples dictionary (``Training.dict.pkl``: a pickled list of
    ``(word, id, freq, df)``); ids are kept exactly, missing special tokens are appended.

    Returns the vocabulary and the number of ids the dictionary itself defines (the special
    tokens appended after them never occur in the corpus's id lists).
    """
    path = Path(path)
    data = restricted_load(path)
    if not isinstance(data, (list, tuple)):
        raise CorpusError(
            f"{path}: expected a list of (word, id, freq, df) tuples, got {type(data).__name__}"
        )
    by_id: dict[int, tuple[str, int]] = {}
    seen_words: dict[str, int] = {}
    for index, entry in enumerate(data):
        where = f"{path}: entry {index}"
        if not isinstance(entry, (list, tuple)) or len(entry) < 2:
            raise CorpusError(f"{where}: expected a (word, id, freq, df) tuple, got {shown(entry)}")
        word, token_id = entry[0], entry[1]
        frequency = entry[2] if len(entry) > 2 else 0
        if isinstance(word, bytes):
            try:
                word = word.decode("utf-8")
            except UnicodeDecodeError:
                word = word.decode("latin-1")
        if not isinstance(word, str) or not word:
            raise CorpusError(f"{where}: the word must be a non-empty string, got {shown(word)}")
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise CorpusError(f"{where}: the id must be an integer, got {shown(token_id)}")
        if isinstance(frequency, bool) or not isinstance(frequency, (int, float)):
            raise CorpusError(f"{where}: the frequency must be a number, got {shown(frequency)}")
        if token_id in by_id:
            raise CorpusError(
                f"{where}: id {shown(token_id)} of {shown(word)} already belongs to "
                f"{shown(by_id[token_id][0])}"
            )
        if word in seen_words:
            raise CorpusError(
                f"{where}: word {shown(word)} appears twice "
                f"(ids {shown(seen_words[word])} and {shown(token_id)})"
            )
        by_id[token_id] = (word, int(frequency))
        seen_words[word] = token_id
    if not by_id:
        raise CorpusError(f"{path}: the dictionary is empty")
    size = len(by_id)
    if min(by_id) != 0 or max(by_id) != size - 1:
        missing = [i for i in range(size + 1) if i not in by_id][:5]  # one must be
        raise CorpusError(
            f"{path}: the ids must be contiguous 0..{size - 1}; "
            f"ids range {shown(min(by_id))}..{shown(max(by_id))}, missing e.g. {missing}"
        )
    tokens = [by_id[i][0] for i in range(size)]
    frequencies = [by_id[i][1] for i in range(size)]
    for token in SPECIAL_TOKENS:
        if token not in seen_words:
            tokens.append(token)
            frequencies.append(0)
    return Vocabulary(tokens, frequencies), size


# --- the corpus ---------------------------------------------------------------------------

_MARKER_RE = re.compile(r"</?[a-z_]+>")


def is_movietriples(path: Path) -> bool:
    """Whether ``path`` looks like a MovieTriples directory or one of its files."""
    return (path.is_dir() and (path / SPLIT_FILES["train"]).is_file()) or (
        path.is_file() and path.name in (DICT_FILE, *SPLIT_FILES.values())
    )


def load_movietriples(
    path: Path, collector: DialogueCollector
) -> tuple[dict[str, list[Dialogue]], Vocabulary]:
    """The corpus's own splits and its dictionary (``path``: the directory or a file in it)."""
    if path.is_file() and path.name.endswith(".pkl"):
        path = path.parent
    if not path.is_dir():
        raise CorpusError(f"{path}: a MovieTriples corpus is a directory holding {DICT_FILE}")
    dict_path = path / DICT_FILE
    if not dict_path.is_file():
        raise CorpusError(f"{dict_path}: missing MovieTriples dictionary file")
    for file_name in SPLIT_FILES.values():
        if not (path / file_name).is_file():
            raise CorpusError(f"{path / file_name}: missing MovieTriples split file")
    # Ids past the dictionary's own (special tokens the import appended) never occur in data.
    vocabulary, dict_size = load_movietriples_dict(dict_path)
    bos, eos = vocabulary.id_of(BOS), vocabulary.id_of(EOS)
    if BOS not in vocabulary.tokens[:dict_size] or EOS not in vocabulary.tokens[:dict_size]:
        raise CorpusError(f"{dict_path}: the dictionary lacks {BOS} or {EOS}")
    # Dictionary words pass through the tokenizer like all text (most are single tokens
    # already); marker words other than our special tokens (e.g. speaker tags) are dropped.
    pieces: list[str | None] = []  # None: a marker word, dropped
    for word in vocabulary.tokens[:dict_size]:
        if word in (PAD, BOS, EOS) or (_MARKER_RE.fullmatch(word) and word not in SPECIAL_TOKENS):
            pieces.append(None)
        else:
            pieces.append(" ".join(tokenize(word, map_numbers=collector.map_numbers)))
    dropped: Counter[int] = Counter()
    splits: dict[str, list[Dialogue]] = {}
    for split, file_name in SPLIT_FILES.items():
        file_path = path / file_name
        records = restricted_load(file_path)
        if not isinstance(records, (list, tuple)):
            raise CorpusError(
                f"{file_path}: expected a list of id lists, got {type(records).__name__}"
            )
        dialogues: list[Dialogue] = []
        seen: set[int] = set()  # ids of the record objects: all alive in ``records``
        for index, record in enumerate(records):
            if not isinstance(record, (list, tuple)):
                raise CorpusError(
                    f"{file_path}: record {index}: expected a list of word ids, "
                    f"got {type(record).__name__}"
                )
            if id(record) in seen:
                # A pickle memo reference: two bytes that repeat a whole record, so that a
                # small file could stand for billions of ids. A pickler never writes it.
                raise CorpusError(
                    f"{file_path}: record {index} is a reference to an earlier record; "
                    "MovieTriples records are written out one by one"
                )
            seen.add(id(record))
            utterances: list[str] = []
            current: list[str] = []
            for token_id in record:
                if isinstance(token_id, bool) or not isinstance(token_id, int):
                    raise CorpusError(
                        f"{file_path}: record {index}: word id {shown(token_id)} is not an integer"
                    )
                if not 0 <= token_id < dict_size:
                    raise CorpusError(
                        f"{file_path}: record {index}: word id {shown(token_id)} is outside the "
                        f"dictionary {dict_path.name} (ids 0..{dict_size - 1})"
                    )
                if token_id == eos:
                    utterances.append(" ".join(current))
                    current = []
                elif token_id != bos:
                    piece = pieces[token_id]
                    if piece:
                        current.append(piece)
                    elif piece is None:
                        dropped[token_id] += 1
            if current:
                utterances.append(" ".join(current))
            dialogue = collector.tokenized_dialogue(utterances, str(file_path))
            if dialogue is not None:
                dialogues.append(dialogue)
        splits[split] = dialogues
    for token_id, count in sorted(dropped.items()):
        word = vocabulary.tokens[token_id]
        collector.skip(f"{path}: occurrences of the marker word {shown(word)} (dropped)", count)
    return splits, vocabulary
