"""What every corpus format shares: the ``Corpus``, its errors, the seeded split, and the
helpers a loader uses to read files and to turn raw utterances into clean dialogues.

Every utterance is tokenized with :func:`rasa_hred.core.vocab.tokenize` and stored as its tokens
joined by single spaces, whatever the source format. Dialogues with fewer than two utterances
are skipped and counted in :attr:`Corpus.skipped`; bad input raises :class:`CorpusError` naming
the file and the record.

A corpus file costs time and memory in proportion to its size, and its size is bounded
(``MAX_FILE_BYTES``, ``MAX_YAML_FILE_BYTES``) before it is read: what could multiply a small
file (YAML aliases, shared pickle records, a pickle memo index) is refused.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import math
import os
import random
import reprlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rasa_hred.core.vocab import Vocabulary, tokenize
from rasa_hred.errors import UserError

Dialogue = list[str]

SPLIT_NAMES = ("train", "validation", "test")
YAML_SUFFIXES = (".yml", ".yaml")

# Text and pickle files (MovieTriples' largest, Training.triples.pkl, is about 30 MB).
MAX_FILE_BYTES = 1024 * 1024 * 1024
# YAML becomes Python objects at about 20 times its size; corpora written as YAML
# (chatterbot-corpus, Rasa stories) are kilobytes to a few megabytes.
MAX_YAML_FILE_BYTES = 64 * 1024 * 1024
_READ_CHUNK_BYTES = 1024 * 1024


class CorpusError(UserError):
    """A corpus that cannot be read: the message names the file and the record."""


@dataclass
class Corpus:
    """Dialogues per split. Each dialogue is a list of >= 2 utterances; each utterance is a
    string of tokens (as produced by :func:`~rasa_hred.core.vocab.tokenize`) joined by spaces."""

    train: list[Dialogue]
    validation: list[Dialogue]
    test: list[Dialogue]
    vocabulary: Vocabulary | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Dialogue]:
        """The dialogues of split ``name``: ``train``, ``validation`` (or ``valid``), ``test``,
        or ``all`` (train, validation and test in that order: a file that was never split)."""
        if name == "all":
            return [*self.train, *self.validation, *self.test]
        key = {"train": "train", "validation": "validation", "valid": "validation"}.get(name, name)
        if key not in SPLIT_NAMES:
            raise CorpusError(
                f"unknown split {name!r}; choose train, validation (or valid), test or all"
            )
        dialogues: list[Dialogue] = getattr(self, key)
        return dialogues

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


class DialogueCollector:
    """Cleans the dialogues of one load and counts what it skipped, and why."""

    def __init__(self, map_numbers: bool) -> None:
        self.map_numbers = map_numbers
        self.skipped: dict[str, int] = {}

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count

    def dialogue(
        self, utterances: Iterable[str], source: str, what: str = "dialogue"
    ) -> Dialogue | None:
        """Tokenize and clean one dialogue; ``None`` (counted) when < 2 utterances remain."""
        return self.tokenized_dialogue(
            (
                " ".join(tokenize(utterance, map_numbers=self.map_numbers))
                for utterance in utterances
            ),
            source,
            what,
        )

    def tokenized_dialogue(
        self, utterances: Iterable[str], source: str, what: str = "dialogue"
    ) -> Dialogue | None:
        """Like :meth:`dialogue` for utterances that are already tokenized and space-joined."""
        cleaned = [utterance for utterance in utterances if utterance]
        if len(cleaned) < 2:
            self.skip(f"{source}: {what} with fewer than 2 utterances")
            return None
        return cleaned


def package_directory(module: str, distribution: str) -> Path:
    """The directory of an installed data package (``chatterbot_corpus``, ``chitchat_dataset``):
    its data is read where pip put it, never copied."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            f"the {distribution} package is not installed (pip install {distribution})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


# --- reading files ------------------------------------------------------------------------


def read_bytes(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The whole file; a file larger than ``limit`` bytes is refused before it is read (a
    pipe or device, which has no size, is refused once ``limit`` bytes have come)."""
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > limit:
                raise CorpusError(too_large(path, size, limit))
            return read_at_most(file, limit, str(path))
    except IsADirectoryError:
        raise CorpusError(f"{path}: is a directory, expected a file") from None
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except OSError as error:
        raise CorpusError(f"{path}: cannot read: {error.strerror}") from None


def read_at_most(file: IO[bytes], limit: int, source: str) -> bytes:
    """The rest of ``file``, or :class:`CorpusError` as soon as it exceeds ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0
    while chunk := file.read(min(_READ_CHUNK_BYTES, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise CorpusError(too_large(source, None, limit))
    return b"".join(chunks)


def too_large(source: object, size: int | None, limit: int) -> str:
    has = f"{size} bytes" if size is not None else "more bytes"
    return f"{source}: the file has {has} than the limit of {limit} bytes for a corpus file"


def read_yaml(path: Path) -> Any:
    """A YAML file with every scalar kept as a string (no object is ever built).

    Aliases (``*name``) are refused: a few kilobytes of nested aliases name gigabytes of
    text, which the loaders would walk through. Corpus files have no use for them."""
    import yaml

    raw = read_bytes(path, MAX_YAML_FILE_BYTES)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise CorpusError(
            f"{path}: line {line}: not valid UTF-8 (byte offset {error.start})"
        ) from None
    try:
        return yaml.load(text, Loader=_no_alias_loader())  # builds no objects: safe
    except _AliasRefused as refused:
        raise CorpusError(
            f"{path}: line {refused.line}, column {refused.column}: the node anchored here "
            "(&name) is repeated by a YAML alias (*name); corpus files may not use aliases "
            "(a few KB of them can stand for gigabytes of text)"
        ) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise CorpusError(f"{path}: {where}invalid YAML: {error.problem or error}") from None
    except yaml.YAMLError as error:
        raise CorpusError(f"{path}: invalid YAML: {error}") from None
    except RecursionError:
        raise CorpusError(f"{path}: YAML nested too deeply") from None


class _AliasRefused(Exception):
    def __init__(self, line: int, column: int) -> None:
        super().__init__(line, column)
        self.line, self.column = line, column


@functools.cache
def _no_alias_loader() -> type:
    """PyYAML's ``BaseLoader`` (the C one when available) refusing aliases.

    The composer (C code in ``CBaseLoader``) turns an alias into a second reference to the
    anchored node, so the node graph stays as small as the text; the constructor then meets
    that node a second time, which is where the alias is refused, before anything is built
    from it (recursive aliases included)."""
    import yaml

    base = getattr(yaml, "CBaseLoader", yaml.BaseLoader)

    def construct_object(self: Any, node: Any, deep: bool = False) -> Any:
        if node in self.constructed_objects or node in self.recursive_objects:
            raise _AliasRefused(node.start_mark.line + 1, node.start_mark.column + 1)
        return base.construct_object(self, node, deep)

    return type("NoAliasLoader", (base,), {"construct_object": construct_object})


def yaml_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in YAML_SUFFIXES)


def scalar_text(value: Any, where: str) -> str:
    """A YAML scalar as text; a mapping or list where a text belongs is an error."""
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        raise CorpusError(f"{where}: expected a text, got a {type(value).__name__}")
    return value if isinstance(value, str) else str(value)


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 60
_SHORT_REPR.maxlevel = 3


def shown(value: object) -> str:
    """A value from a file as an error message quotes it: a bounded repr, whatever its size,
    depth or kind (a 10 MB string, deeply nested lists, an integer of a million digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<a {value.bit_length()}-bit integer>"
    try:
        return _SHORT_REPR.repr(value)
    except (ValueError, RecursionError):
        return f"<a {type(value).__name__}>"


def merge_turns(turns: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``(speaker, text)`` turns with consecutive turns of one speaker joined by a space.

    Each text is joined once (not concatenated turn by turn, which is quadratic in the
    length of a long run of one speaker)."""
    return [
        (speaker, " ".join(text for _, text in run))
        for speaker, run in itertools.groupby(turns, key=lambda turn: turn[0])
    ]


# --- the split ----------------------------------------------------------------------------


def split_dialogues(
    dialogues: Sequence[Dialogue],
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
) -> tuple[list[Dialogue], list[Dialogue], list[Dialogue]]:
    """Shuffle with ``random.Random(seed)`` and cut into train/validation/test.

    With three or more dialogues, validation and train always get at least one; test gets at
    least one when its fraction is above zero.
    """
    check_fractions(fractions)
    order = list(range(len(dialogues)))
    random.Random(seed).shuffle(order)
    shuffled = [dialogues[i] for i in order]
    n = len(shuffled)
    _, f_valid, f_test = (f / sum(fractions) for f in fractions)
    if n >= 3:
        n_valid = max(1, round(n * f_valid))
        n_test = max(1, round(n * f_test)) if f_test > 0 else 0
        while n_valid + n_test > n - 1:  # keep at least one training dialogue
            if n_test > (1 if f_test > 0 else 0):
                n_test -= 1
            else:
                n_valid -= 1
    else:
        n_valid = 1 if n == 2 else 0
        n_test = 0
    n_train = n - n_valid - n_test
    return (
        shuffled[:n_train],
        shuffled[n_train : n_train + n_valid],
        shuffled[n_train + n_valid :],
    )


def check_fractions(fractions: tuple[float, float, float]) -> None:
    if len(fractions) != 3 or any(
        not isinstance(f, (int, float)) or math.isnan(f) or f < 0 for f in fractions
    ):
        raise CorpusError(f"split fractions must be three non-negative numbers, got {fractions}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise CorpusError(f"split fractions must sum to 1, got {fractions} (sum {sum(fractions)})")
