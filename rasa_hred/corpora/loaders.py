"""Dialogue corpora: loaders for MovieTriples, Serban's text form, chatterbot-corpus YAML and
Rasa stories, a seeded train/validation/test split, and corpus statistics.

A corpus *spec* is a path, optionally prefixed with its format:

- ``movietriples:DIR`` (or a directory holding ``Training.triples.pkl``): the MovieTriples
  pickles; the corpus keeps its own splits and brings its own dictionary;
- ``text:FILE`` (or a ``.txt``/``.tsv``/``.dialogues`` file): one dialogue per line, utterances
  separated by tabs or by ``</s>`` (``<s>``/``</s>`` markers are stripped);
- ``chatterbot:FILE_OR_DIR`` or ``chatterbot:LANGUAGE`` (e.g. ``chatterbot:english``, the data
  of the installed ``chatterbot-corpus`` package): YAML with ``conversations:``;
- ``rasa:FILE_OR_DIR``: Rasa stories/rules YAML with end-to-end text (``- user: ...``,
  ``- bot: ...``); consecutive turns of one speaker are merged.

A ``.yml``/``.yaml`` file without prefix is detected by its content, and a directory without
prefix loads every YAML and text file in it (YAML files holding neither conversations nor
stories, such as ``nlu.yml`` or ``domain.yml``, are passed over and reported).

Every utterance is tokenized with :func:`rasa_hred.core.vocab.tokenize` and stored as its tokens
joined by single spaces, whatever the source format. Dialogues with fewer than two utterances
are skipped and counted in :attr:`Corpus.skipped`; bad input raises :class:`CorpusError` naming
the file and the record.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from rasa_hred.core.vocab import (
    BOS,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    Vocabulary,
    tokenize,
)
from rasa_hred.errors import UserError

Dialogue = list[str]

SPLIT_NAMES = ("train", "validation", "test")
MOVIETRIPLES_FILES = {
    "train": "Training.triples.pkl",
    "validation": "Validation.triples.pkl",
    "test": "Test.triples.pkl",
}
MOVIETRIPLES_DICT = "Training.dict.pkl"
TEXT_SUFFIXES = (".txt", ".tsv", ".dialogues")
YAML_SUFFIXES = (".yml", ".yaml")
FORMATS = ("movietriples", "text", "chatterbot", "rasa")


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
        """The dialogues of split ``name``: ``train``, ``validation`` (or ``valid``), ``test``."""
        key = {"train": "train", "validation": "validation", "valid": "validation"}.get(name, name)
        if key not in SPLIT_NAMES:
            raise CorpusError(
                f"unknown split {name!r}; choose train, validation (or valid) or test"
            )
        return getattr(self, key)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


# --- restricted unpickling ----------------------------------------------------------------


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data (lists, tuples, dicts, numbers, strings, bytes) and nothing else:
    every global lookup (classes, functions such as ``os.system``) is refused."""

    def __init__(self, file: BinaryIO, source: str) -> None:
        # Python 2 pickles (MovieTriples was written with cPickle) hold byte strings; keep them
        # as bytes instead of guessing an encoding here.
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        raise CorpusError(
            f"{self._source}: refuses to unpickle {module}.{name}: only plain lists, tuples, "
            "numbers and strings are accepted (the file may be malicious or not a corpus file)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise CorpusError(f"{self._source}: refuses to unpickle a persistent object reference")


def restricted_load(path_or_file: str | Path | BinaryIO) -> object:
    """Load a pickle holding only plain data; anything that needs a global (a class, a
    function) raises :class:`CorpusError`, as do missing, truncated and corrupt files."""
    if isinstance(path_or_file, (str, Path)):
        path = Path(path_or_file)
        try:
            with path.open("rb") as file:
                return _restricted_load_file(file, str(path))
        except FileNotFoundError:
            raise CorpusError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise CorpusError(f"{path}: is a directory, expected a pickle file") from None
        except PermissionError:
            raise CorpusError(f"{path}: permission denied") from None
    source = str(getattr(path_or_file, "name", "<pickle stream>"))
    return _restricted_load_file(path_or_file, source)


def _restricted_load_file(file: BinaryIO, source: str) -> object:
    try:
        return _DataOnlyUnpickler(file, source).load()
    except CorpusError:
        raise
    except EOFError:
        raise CorpusError(f"{source}: truncated or empty pickle file") from None
    except RecursionError:
        raise CorpusError(f"{source}: pickle nested too deeply") from None
    except MemoryError:
        raise CorpusError(f"{source}: pickle too large to load") from None
    except Exception as error:  # UnpicklingError, ValueError, KeyError, ... on corrupt data
        raise CorpusError(
            f"{source}: corrupt or unsupported pickle ({type(error).__name__}: {error})"
        ) from None


# --- helpers ------------------------------------------------------------------------------


class _Collector:
    """Dialogues from one spec plus the skip counts."""

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


def _split_prefix(spec: str) -> tuple[str | None, str]:
    match = re.fullmatch(r"([A-Za-z][A-Za-z0-9_-]+):(.*)", spec, flags=re.DOTALL)
    if match is None or Path(spec).expanduser().exists():
        return None, spec
    prefix = match.group(1).lower()
    if prefix not in FORMATS:
        raise CorpusError(
            f"corpus spec {spec!r}: unknown format {prefix!r} (and no such path); "
            f"use one of {', '.join(f + ':' for f in FORMATS)} or a path"
        )
    return prefix, match.group(2)


def _existing_path(path_text: str, spec: str) -> Path:
    if not path_text:
        raise CorpusError(f"corpus spec {spec!r}: no path given")
    path = Path(path_text).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus spec {spec!r}: no such file or directory: {path}")
    return path


def _read_yaml(path: Path) -> Any:
    import yaml

    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)  # every scalar stays a string
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise CorpusError(
            f"{path}: line {line}: not valid UTF-8 (byte offset {error.start})"
        ) from None
    try:
        return yaml.load(text, Loader=loader)  # BaseLoader builds no objects: safe
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise CorpusError(f"{path}: {where}invalid YAML: {error.problem or error}") from None
    except yaml.YAMLError as error:
        raise CorpusError(f"{path}: invalid YAML: {error}") from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise CorpusError(f"{path}: is a directory, expected a file") from None
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except OSError as error:
        raise CorpusError(f"{path}: cannot read: {error.strerror}") from None


def _scalar_text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        raise CorpusError(f"{where}: expected a text, got a {type(value).__name__}")
    return value if isinstance(value, str) else str(value)


# --- MovieTriples -------------------------------------------------------------------------

_MARKER_RE = re.compile(r"</?[a-z_]+>")


def _load_movietriples(
    path: Path, collector: _Collector
) -> tuple[dict[str, list[Dialogue]], Vocabulary]:
    if path.is_file() and path.name.endswith(".pkl"):
        path = path.parent
    if not path.is_dir():
        raise CorpusError(
            f"{path}: a MovieTriples corpus is a directory holding {MOVIETRIPLES_DICT}"
        )
    dict_path = path / MOVIETRIPLES_DICT
    if not dict_path.is_file():
        raise CorpusError(f"{dict_path}: missing MovieTriples dictionary file")
    for file_name in MOVIETRIPLES_FILES.values():
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
    for split, file_name in MOVIETRIPLES_FILES.items():
        file_path = path / file_name
        records = restricted_load(file_path)
        if not isinstance(records, (list, tuple)):
            raise CorpusError(
                f"{file_path}: expected a list of id lists, got {type(records).__name__}"
            )
        dialogues: list[Dialogue] = []
        for index, record in enumerate(records):
            if not isinstance(record, (list, tuple)):
                raise CorpusError(
                    f"{file_path}: record {index}: expected a list of word ids, "
                    f"got {type(record).__name__}"
                )
            utterances: list[str] = []
            current: list[str] = []
            for token_id in record:
                if isinstance(token_id, bool) or not isinstance(token_id, int):
                    raise CorpusError(
                        f"{file_path}: record {index}: word id {token_id!r} is not an integer"
                    )
                if not 0 <= token_id < dict_size:
                    raise CorpusError(
                        f"{file_path}: record {index}: word id {token_id} is outside the "
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
        collector.skip(f"{path}: occurrences of the marker word {word!r} (dropped)", count)
    return splits, vocabulary


# --- Serban's text form -------------------------------------------------------------------

_TEXT_SEPARATOR_RE = re.compile(r"\t|</s>")
_BOS_RE = re.compile(r"(?<!\S)<s>(?!\S)")


def _load_text(path: Path, collector: _Collector) -> list[Dialogue]:
    raw = _read_bytes(path)
    dialogues: list[Dialogue] = []
    offset = 0
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        try:
            line = line_bytes.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as error:
            raise CorpusError(
                f"{path}: line {number}: not valid UTF-8 (byte offset {offset + error.start})"
            ) from None
        offset += len(line_bytes) + 1
        line = line.rstrip("\r")
        if not line.strip():
            continue  # blank lines separate nothing and hold nothing
        utterances = [_BOS_RE.sub(" ", part) for part in _TEXT_SEPARATOR_RE.split(line)]
        dialogue = collector.dialogue(utterances, f"{path}")
        if dialogue is not None:
            dialogues.append(dialogue)
    return dialogues


# --- chatterbot-corpus --------------------------------------------------------------------


def _chatterbot_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            "the chatterbot-corpus package is not installed (pip install chatterbot-corpus)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _chatterbot_language_files(language: str, spec: str) -> tuple[Path, list[Path]]:
    data = _chatterbot_data_dir()
    directory = data / language
    if not re.fullmatch(r"[A-Za-z_-]+", language) or not directory.is_dir():
        available = sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
        raise CorpusError(
            f"corpus spec {spec!r}: no such file, directory or chatterbot-corpus language "
            f"{language!r} (languages: {', '.join(available) or 'none found'})"
        )
    files = _yaml_files(directory)
    if not files:
        raise CorpusError(f"{directory}: no YAML files in the chatterbot-corpus language")
    return directory, files


def _yaml_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in YAML_SUFFIXES)


def _chatterbot_dialogues(data: Any, path: Path, collector: _Collector) -> list[Dialogue]:
    if not isinstance(data, dict) or "conversations" not in data:
        raise CorpusError(f"{path}: not a chatterbot corpus file (no top-level 'conversations:')")
    conversations = data["conversations"]
    if conversations is None or conversations == "":
        conversations = []
    if not isinstance(conversations, list):
        raise CorpusError(
            f"{path}: 'conversations' must be a list of lists of texts, "
            f"got {type(conversations).__name__}"
        )
    dialogues: list[Dialogue] = []
    for index, conversation in enumerate(conversations):
        where = f"{path}: conversation {index}"
        if isinstance(conversation, str):
            # A "- text" where "- - text" was meant (the installed chatterbot-corpus has a few):
            # one utterance, so no dialogue; counted like any other short dialogue.
            collector.skip(f"{path}: conversation written as a single text, not a list")
            continue
        if not isinstance(conversation, list):
            raise CorpusError(
                f"{where}: expected a list of texts, got {type(conversation).__name__}"
            )
        texts = [_scalar_text(entry, f"{where}, entry {i}") for i, entry in enumerate(conversation)]
        dialogue = collector.dialogue(texts, str(path))
        if dialogue is not None:
            dialogues.append(dialogue)
    return dialogues


# --- Rasa stories -------------------------------------------------------------------------

# [text](entity), [text]{"entity": ...}, [text][{...}]: keep the text.
_ENTITY_RE = re.compile(r"\[([^\[\]]*)\](?:\([^()]*\)|\{[^{}]*\}|\[[^\[\]]*\])")


def _rasa_dialogues(data: Any, path: Path, collector: _Collector) -> list[Dialogue]:
    if not isinstance(data, dict) or not ({"stories", "rules"} & set(data)):
        raise CorpusError(f"{path}: not a Rasa stories file (no top-level 'stories:' or 'rules:')")
    dialogues: list[Dialogue] = []
    for section in ("stories", "rules"):
        items = data.get(section)
        if items is None or items == "":
            continue
        if not isinstance(items, list):
            raise CorpusError(f"{path}: '{section}' must be a list, got {type(items).__name__}")
        kind = {"stories": "story", "rules": "rule"}[section]
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise CorpusError(
                    f"{path}: {kind} {index}: expected a mapping, got {type(item).__name__}"
                )
            name = item.get(kind)
            where = f"{path}: {kind} {index}" + (f" ({name!r})" if isinstance(name, str) else "")
            steps = item.get("steps")
            if steps is None or steps == "":
                steps = []
            if not isinstance(steps, list):
                raise CorpusError(f"{where}: 'steps' must be a list, got {type(steps).__name__}")
            turns: list[tuple[str, str]] = []  # (speaker, text), consecutive speakers merged
            for step_index, step in enumerate(steps):
                if not isinstance(step, dict):
                    raise CorpusError(
                        f"{where}, step {step_index}: expected a mapping, got {type(step).__name__}"
                    )
                for speaker in ("user", "bot"):
                    if speaker not in step:
                        continue
                    text = _scalar_text(step[speaker], f"{where}, step {step_index}")
                    if speaker == "user":
                        text = _ENTITY_RE.sub(r"\1", text)
                    text = " ".join(text.split())
                    if not text:
                        continue
                    if turns and turns[-1][0] == speaker:
                        turns[-1] = (speaker, f"{turns[-1][1]} {text}")
                    else:
                        turns.append((speaker, text))
            dialogue = collector.dialogue([text for _, text in turns], str(path), kind)
            if dialogue is not None:
                dialogues.append(dialogue)
    return dialogues


# --- dispatch -----------------------------------------------------------------------------


def _load_yaml_file(
    path: Path, fmt: str | None, collector: _Collector, *, in_directory: bool = False
) -> list[Dialogue] | None:
    data = _read_yaml(path)
    if fmt is None:
        if isinstance(data, dict) and "conversations" in data:
            fmt = "chatterbot"
        elif isinstance(data, dict) and ({"stories", "rules"} & set(data)):
            fmt = "rasa"
        elif in_directory:
            collector.skip(f"{path}: YAML file without conversations, stories or rules")
            return None
        else:
            raise CorpusError(
                f"{path}: YAML holds neither chatterbot 'conversations:' nor Rasa 'stories:' "
                "or 'rules:'"
            )
    if fmt == "chatterbot":
        return _chatterbot_dialogues(data, path, collector)
    return _rasa_dialogues(data, path, collector)


def _load_spec(
    spec: str, collector: _Collector
) -> tuple[dict[str, list[Dialogue]] | None, list[Dialogue], Vocabulary | None, str]:
    """Returns (own splits or None, unsplit dialogues, vocabulary, source description)."""
    fmt, path_text = _split_prefix(spec)
    if fmt == "chatterbot" and not Path(path_text).expanduser().exists():
        directory, files = _chatterbot_language_files(path_text, spec)
        dialogues: list[Dialogue] = []
        for file in files:
            dialogues += _load_yaml_file(file, "chatterbot", collector) or []
        return None, dialogues, None, f"chatterbot:{path_text} ({directory}, {len(files)} files)"
    path = _existing_path(path_text, spec)

    if fmt == "movietriples" or (
        fmt is None
        and (
            (path.is_dir() and (path / MOVIETRIPLES_FILES["train"]).is_file())
            or (path.is_file() and path.name in (MOVIETRIPLES_DICT, *MOVIETRIPLES_FILES.values()))
        )
    ):
        splits, vocabulary = _load_movietriples(path, collector)
        return splits, [], vocabulary, f"movietriples:{path}"

    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and (
                (fmt in (None, "chatterbot", "rasa") and p.suffix in YAML_SUFFIXES)
                or (fmt in (None, "text") and p.suffix in TEXT_SUFFIXES)
            )
        )
        if not files:
            wanted = "YAML or text" if fmt is None else fmt
            raise CorpusError(f"{path}: no {wanted} corpus files in the directory")
        dialogues = []
        for file in files:
            if file.suffix in TEXT_SUFFIXES:
                dialogues += _load_text(file, collector)
            else:
                dialogues += _load_yaml_file(file, fmt, collector, in_directory=True) or []
        return None, dialogues, None, f"{fmt or 'dir'}:{path} ({len(files)} files)"

    if fmt == "text" or (fmt is None and path.suffix.lower() in TEXT_SUFFIXES):
        return None, _load_text(path, collector), None, f"text:{path}"
    if fmt in ("chatterbot", "rasa") or path.suffix.lower() in YAML_SUFFIXES:
        dialogues = _load_yaml_file(path, fmt, collector) or []
        return None, dialogues, None, f"{fmt or 'yaml'}:{path}"
    raise CorpusError(
        f"{path}: unknown corpus format (suffix {path.suffix or 'none'}); prefix the spec with "
        f"{', '.join(f + ':' for f in FORMATS)} or use a .txt/.tsv/.dialogues/.yml file"
    )


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
    _check_fractions(fractions)
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


def _check_fractions(fractions: tuple[float, float, float]) -> None:
    if len(fractions) != 3 or any(
        not isinstance(f, (int, float)) or math.isnan(f) or f < 0 for f in fractions
    ):
        raise CorpusError(f"split fractions must be three non-negative numbers, got {fractions}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise CorpusError(f"split fractions must sum to 1, got {fractions} (sum {sum(fractions)})")


def load_corpus(
    specs: str | Sequence[str],
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
    map_numbers: bool = True,
) -> Corpus:
    """Load and combine corpus specs (see the module docstring).

    Sources with their own splits (MovieTriples) keep them; all other dialogues are pooled, in
    spec order, and split by :func:`split_dialogues` with ``seed``. When a MovieTriples source
    is present its dictionary becomes :attr:`Corpus.vocabulary`.
    """
    if isinstance(specs, (str, Path)):
        specs = [str(specs)]
    specs = [str(spec) for spec in specs]
    if not specs:
        raise CorpusError("no corpus spec given")
    _check_fractions(fractions)
    collector = _Collector(map_numbers)
    own: dict[str, list[Dialogue]] = {name: [] for name in SPLIT_NAMES}
    pooled: list[Dialogue] = []
    vocabulary: Vocabulary | None = None
    sources: list[str] = []
    for spec in specs:
        splits, dialogues, spec_vocabulary, source = _load_spec(spec, collector)
        sources.append(source)
        if splits is not None:
            for name in SPLIT_NAMES:
                own[name] += splits[name]
        pooled += dialogues
        if spec_vocabulary is not None:
            if vocabulary is not None and vocabulary != spec_vocabulary:
                raise CorpusError(
                    f"corpus spec {spec!r}: its MovieTriples dictionary differs from the one of "
                    "an earlier spec; combine MovieTriples corpora that share one dictionary"
                )
            vocabulary = spec_vocabulary
    train, validation, test = split_dialogues(pooled, seed=seed, fractions=fractions)
    corpus = Corpus(
        train=own["train"] + train,
        validation=own["validation"] + validation,
        test=own["test"] + test,
        vocabulary=vocabulary,
        skipped=dict(collector.skipped),
        sources=sources,
    )
    if not (corpus.train or corpus.validation or corpus.test):
        detail = "; ".join(f"{reason}: {count}" for reason, count in collector.skipped.items())
        raise CorpusError(
            f"empty corpus: no dialogue with at least 2 utterances in {', '.join(specs)}"
            + (f" (skipped: {detail})" if detail else "")
        )
    return corpus


# --- statistics ---------------------------------------------------------------------------


def _percentile(sorted_values: Sequence[int], percent: float) -> int:
    """Nearest-rank percentile of already sorted values (0 when empty)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _iter_utterances(dialogues: Iterable[Dialogue]) -> Iterator[list[str]]:
    for dialogue in dialogues:
        for utterance in dialogue:
            yield utterance.split()


def corpus_stats(corpus: Corpus, vocab_size: int = 10000) -> dict:
    """Per split: dialogues, utterances, tokens, the fraction of tokens covered by the
    ``vocab_size`` most frequent training words (plus the special tokens), utterance length
    percentiles (p50/p90/p99, nearest rank, in tokens) and mean turns per dialogue. When the
    corpus brings a vocabulary (MovieTriples), its coverage is reported as well."""
    if vocab_size < 0:
        raise CorpusError(f"--vocab-size must be >= 0, got {vocab_size}")
    full = Vocabulary.build(_iter_utterances(corpus.train), max_size=None)
    word_types = len(full) - len(SPECIAL_TOKENS)
    vocabulary = set(full.tokens[: len(SPECIAL_TOKENS) + vocab_size])
    splits: dict[str, dict[str, Any]] = {}
    for name in SPLIT_NAMES:
        dialogues = corpus.split(name)
        lengths: list[int] = []
        covered = 0
        own_covered = 0
        for tokens in _iter_utterances(dialogues):
            lengths.append(len(tokens))
            covered += sum(1 for token in tokens if token in vocabulary)
            if corpus.vocabulary is not None:
                own_covered += sum(1 for token in tokens if token in corpus.vocabulary)
        lengths.sort()
        total = sum(lengths)
        entry: dict[str, Any] = {
            "dialogues": len(dialogues),
            "utterances": len(lengths),
            "tokens": total,
            "coverage": covered / total if total else 0.0,
            "utterance_length": {
                "p50": _percentile(lengths, 50),
                "p90": _percentile(lengths, 90),
                "p99": _percentile(lengths, 99),
                "max": lengths[-1] if lengths else 0,
            },
            "mean_turns": len(lengths) / len(dialogues) if dialogues else 0.0,
        }
        if corpus.vocabulary is not None:
            entry["corpus_vocabulary_coverage"] = own_covered / total if total else 0.0
        splits[name] = entry
    stats: dict[str, Any] = {
        "sources": list(corpus.sources),
        "vocab_size": vocab_size,
        "vocabulary_words": min(vocab_size, word_types),
        "train_word_types": word_types,
        "splits": splits,
        "skipped": dict(corpus.skipped),
        "skipped_total": corpus.num_skipped,
    }
    if corpus.vocabulary is not None:
        stats["corpus_vocabulary_size"] = len(corpus.vocabulary)
    return stats


def format_stats(stats: dict) -> str:
    """The human-readable table printed by ``rasa-hred corpus stats``."""
    lines = ["sources:"]
    lines += [f"  {source}" for source in stats["sources"]]
    lines.append(
        f"vocabulary: {stats['vocabulary_words']} most frequent of "
        f"{stats['train_word_types']} training words (--vocab-size {stats['vocab_size']}) "
        "+ special tokens"
    )
    header = (
        f"{'split':<11}{'dialogues':>10}{'utterances':>11}{'tokens':>10}{'coverage':>10}"
        f"{'len p50':>9}{'p90':>5}{'p99':>5}{'turns':>7}"
    )
    lines += ["", header]
    for name, entry in stats["splits"].items():
        length = entry["utterance_length"]
        lines.append(
            f"{name:<11}{entry['dialogues']:>10}{entry['utterances']:>11}{entry['tokens']:>10}"
            f"{entry['coverage']:>10.2%}{length['p50']:>9}{length['p90']:>5}{length['p99']:>5}"
            f"{entry['mean_turns']:>7.2f}"
        )
    if "corpus_vocabulary_size" in stats:
        coverage = ", ".join(
            f"{name} {entry['corpus_vocabulary_coverage']:.2%}"
            for name, entry in stats["splits"].items()
        )
        lines.append(
            f"corpus dictionary ({stats['corpus_vocabulary_size']} tokens) coverage: {coverage}"
        )
    lines.append("")
    lines.append(f"skipped: {stats['skipped_total']}")
    lines += [f"  {count:>6}  {reason}" for reason, count in stats["skipped"].items()]
    return "\n".join(lines)


def stats_command(args: argparse.Namespace) -> int:
    """``rasa-hred corpus stats``: load ``args.specs`` and print their statistics."""
    if args.vocab_size < 0:
        raise CorpusError(f"--vocab-size must be >= 0, got {args.vocab_size}")
    corpus = load_corpus(args.specs, seed=args.seed)
    stats = corpus_stats(corpus, vocab_size=args.vocab_size)
    if getattr(args, "json", False):
        print(json.dumps(stats, indent=2, ensure_ascii=False))
    else:
        print(format_stats(stats))
    return 0


__all__ = [
    "Corpus",
    "CorpusError",
    "Dialogue",
    "corpus_stats",
    "format_stats",
    "load_corpus",
    "restricted_load",
    "split_dialogues",
    "stats_command",
]


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
            raise CorpusError(f"{where}: expected a (word, id, freq, df) tuple, got {entry!r}")
        word, token_id = entry[0], entry[1]
        frequency = entry[2] if len(entry) > 2 else 0
        if isinstance(word, bytes):
            try:
                word = word.decode("utf-8")
            except UnicodeDecodeError:
                word = word.decode("latin-1")
        if not isinstance(word, str) or not word:
            raise CorpusError(f"{where}: the word must be a non-empty string, got {word!r}")
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise CorpusError(f"{where}: the id must be an integer, got {token_id!r}")
        if isinstance(frequency, bool) or not isinstance(frequency, (int, float)):
            raise CorpusError(f"{where}: the frequency must be a number, got {frequency!r}")
        if token_id in by_id:
            raise CorpusError(
                f"{where}: id {token_id} of {word!r} already belongs to {by_id[token_id][0]!r}"
            )
        if word in seen_words:
            raise CorpusError(
                f"{where}: word {word!r} appears twice (ids {seen_words[word]} and {token_id})"
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
            f"ids range {min(by_id)}..{max(by_id)}, missing e.g. {missing}"
        )
    tokens = [by_id[i][0] for i in range(size)]
    frequencies = [by_id[i][1] for i in range(size)]
    for token in SPECIAL_TOKENS:
        if token not in seen_words:
            tokens.append(token)
            frequencies.append(0)
    return Vocabulary(tokens, frequencies), size
