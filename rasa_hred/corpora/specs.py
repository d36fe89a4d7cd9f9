"""Corpus specs: which loader reads a path, and how several sources become one ``Corpus``.

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

- ``chitchat`` (or ``chitchat:FILE``): the Chit-Chat Challenge conversations of the installed
  ``chitchat-dataset`` package (or a file of that JSON form);
- ``cornell:DIR`` (or a directory holding ``movie_lines.txt`` and ``movie_conversations.txt``):
  the Cornell Movie-Dialogs Corpus;
- ``dailydialog:FILE_OR_DIR`` (or ``dialogues_text.txt``, a directory holding it, or a ``.txt``
  file whose first line has the word ``__eou__``): DailyDialog;
- ``personachat:FILE`` (or a ``.txt`` file whose first line is ``1 your persona: ...``,
  ``1 partner's persona: ...`` or ``text:...<TAB>labels:...``): PersonaChat/ConvAI2 in ParlAI
  text form, persona lines kept out of the turns;
- ``jsonl:FILE`` (or a ``.jsonl`` file): one dialogue per line, a JSON list of strings or of
  ``{speaker, text}`` objects;
- the formats of ``PATH_FORMATS`` (``prefix:PATH``; a bare path where its ``detect`` knows it);
- the prefixes of the ``sources`` a caller passes to :func:`load_corpus` for data that is not
  a path this layer can read (the Rasa tracker store: ``tracker-store:ENDPOINTS_YML``).

A new file format is a module beside this one (a loader taking a path and a
``DialogueCollector``, and optionally a detector of bare paths) plus its entry in
``PATH_FORMATS``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rasa_hred.core.vocab import Vocabulary
from rasa_hred.corpora.base import (
    SPLIT_NAMES,
    YAML_SUFFIXES,
    Corpus,
    CorpusError,
    Dialogue,
    DialogueCollector,
    check_fractions,
    read_yaml,
    split_dialogues,
)
from rasa_hred.corpora.chatterbot import (
    chatterbot_dialogues,
    chatterbot_language_files,
    holds_conversations,
)
from rasa_hred.corpora.chitchat import chitchat_dialogues, chitchat_package_file
from rasa_hred.corpora.cornell import cornell_dialogues, is_cornell
from rasa_hred.corpora.dailydialog import dailydialog_dialogues, is_dailydialog
from rasa_hred.corpora.jsonl import is_jsonl, jsonl_dialogues
from rasa_hred.corpora.movietriples import is_movietriples, load_movietriples
from rasa_hred.corpora.personachat import is_personachat, personachat_dialogues
from rasa_hred.corpora.rasa_stories import holds_stories, rasa_dialogues
from rasa_hred.corpora.text import TEXT_SUFFIXES, load_text

#: Reads the dialogues of a spec that is not a path (the rest of the spec after ``prefix:``).
SourceLoader = Callable[[str, DialogueCollector], list[Dialogue]]


@dataclass(frozen=True)
class PathFormat:
    """A format read from one path (file or directory)."""

    load: Callable[[Path, DialogueCollector], list[Dialogue]]
    #: Whether a bare path (no prefix) is in this format; ``None``: only with the prefix.
    detect: Callable[[Path], bool] | None = None
    #: The path a bare ``prefix`` (or ``prefix:``) stands for, e.g. a package's data.
    default: Callable[[], Path] | None = None


PATH_FORMATS: dict[str, PathFormat] = {
    "chitchat": PathFormat(chitchat_dialogues, default=chitchat_package_file),
    "cornell": PathFormat(cornell_dialogues, detect=is_cornell),
    "dailydialog": PathFormat(dailydialog_dialogues, detect=is_dailydialog),
    "personachat": PathFormat(personachat_dialogues, detect=is_personachat),
    "jsonl": PathFormat(jsonl_dialogues, detect=is_jsonl),
}

FORMATS = ("movietriples", "text", "chatterbot", "rasa", *PATH_FORMATS)


@dataclass
class _Source:
    """What one spec brought: its own splits (MovieTriples) or dialogues still to split."""

    description: str
    dialogues: list[Dialogue] = field(default_factory=list)
    splits: dict[str, list[Dialogue]] | None = None
    vocabulary: Vocabulary | None = None


def load_corpus(
    specs: str | Sequence[str],
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
    map_numbers: bool = True,
    sources: Mapping[str, SourceLoader] | None = None,
) -> Corpus:
    """Load and combine corpus specs (see the module docstring).

    ``sources`` maps further spec prefixes to their loaders (layers above this one pass what
    they can read, e.g. a Rasa tracker store).

    Sources with their own splits (MovieTriples) keep them; every other spec's dialogues are
    split on their own by :func:`split_dialogues` with ``seed``, so a dialogue's split does
    not depend on the specs it is combined with (``eval --corpus chitchat`` scores the
    chitchat part of the test split of a model trained on ``chitchat chatterbot:english``).
    Splits hold the specs' dialogues in spec order. When a MovieTriples source is present its
    dictionary becomes :attr:`Corpus.vocabulary`.
    """
    if isinstance(specs, (str, Path)):
        specs = [str(specs)]
    specs = [str(spec) for spec in specs]
    if not specs:
        raise CorpusError("no corpus spec given")
    check_fractions(fractions)
    collector = DialogueCollector(map_numbers)
    splits: dict[str, list[Dialogue]] = {name: [] for name in SPLIT_NAMES}
    vocabulary: Vocabulary | None = None
    descriptions: list[str] = []
    for spec in specs:
        source = _load_spec(spec, collector, sources or {})
        descriptions.append(source.description)
        own = source.splits or dict(
            zip(SPLIT_NAMES, split_dialogues(source.dialogues, seed=seed, fractions=fractions))
        )
        for name in SPLIT_NAMES:
            splits[name] += own[name]
        if source.vocabulary is not None:
            if vocabulary is not None and vocabulary != source.vocabulary:
                raise CorpusError(
                    f"corpus spec {spec!r}: its MovieTriples dictionary differs from the one of "
                    "an earlier spec; combine MovieTriples corpora that share one dictionary"
                )
            vocabulary = source.vocabulary
    corpus = Corpus(
        train=splits["train"],
        validation=splits["validation"],
        test=splits["test"],
        vocabulary=vocabulary,
        skipped=dict(collector.skipped),
        sources=descriptions,
    )
    if not (corpus.train or corpus.validation or corpus.test):
        detail = "; ".join(f"{reason}: {count}" for reason, count in collector.skipped.items())
        raise CorpusError(
            f"empty corpus: no dialogue with at least 2 utterances in {', '.join(specs)}"
            + (f" (skipped: {detail})" if detail else "")
        )
    return corpus


def _load_spec(
    spec: str, collector: DialogueCollector, sources: Mapping[str, SourceLoader]
) -> _Source:
    fmt, path_text = _split_prefix(spec, sources)
    if fmt is not None and fmt in sources:
        return _Source(spec, sources[fmt](path_text, collector))
    path_format = PATH_FORMATS.get(fmt or "")
    if path_format is not None and not path_text and path_format.default is not None:
        path = path_format.default()
        return _Source(f"{fmt} ({path})", path_format.load(path, collector))
    if fmt == "chatterbot" and not Path(path_text).expanduser().exists():
        directory, files = chatterbot_language_files(path_text, spec)
        dialogues: list[Dialogue] = []
        for file in files:
            dialogues += _load_yaml_file(file, "chatterbot", collector) or []
        return _Source(f"chatterbot:{path_text} ({directory}, {len(files)} files)", dialogues)
    path = _existing_path(path_text, spec)

    if fmt == "movietriples" or (fmt is None and is_movietriples(path)):
        splits, vocabulary = load_movietriples(path, collector)
        return _Source(f"movietriples:{path}", splits=splits, vocabulary=vocabulary)
    if path_format is not None:
        return _Source(f"{fmt}:{path}", path_format.load(path, collector))
    if fmt is None:
        for name, candidate in PATH_FORMATS.items():
            if candidate.detect is not None and candidate.detect(path):
                return _Source(f"{name}:{path}", candidate.load(path, collector))

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
                dialogues += load_text(file, collector)
            else:
                dialogues += _load_yaml_file(file, fmt, collector, in_directory=True) or []
        return _Source(f"{fmt or 'dir'}:{path} ({len(files)} files)", dialogues)

    if fmt == "text" or (fmt is None and path.suffix.lower() in TEXT_SUFFIXES):
        return _Source(f"text:{path}", load_text(path, collector))
    if fmt in ("chatterbot", "rasa") or path.suffix.lower() in YAML_SUFFIXES:
        dialogues = _load_yaml_file(path, fmt, collector) or []
        return _Source(f"{fmt or 'yaml'}:{path}", dialogues)
    raise CorpusError(
        f"{path}: unknown corpus format (suffix {path.suffix or 'none'}); prefix the spec with "
        f"{', '.join(f + ':' for f in FORMATS)} or use a .txt/.tsv/.dialogues/.yml file"
    )


def _load_yaml_file(
    path: Path, fmt: str | None, collector: DialogueCollector, *, in_directory: bool = False
) -> list[Dialogue] | None:
    data = read_yaml(path)
    if fmt is None:
        if holds_conversations(data):
            fmt = "chatterbot"
        elif holds_stories(data):
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
        return chatterbot_dialogues(data, path, collector)
    return rasa_dialogues(data, path, collector)


def _split_prefix(spec: str, sources: Mapping[str, SourceLoader]) -> tuple[str | None, str]:
    if Path(spec).expanduser().exists():
        return None, spec
    known = (*FORMATS, *sources)
    bare = spec.lower()
    if bare in PATH_FORMATS and PATH_FORMATS[bare].default is not None:
        return bare, ""  # e.g. ``chitchat``: the package's data
    match = re.fullmatch(r"([A-Za-z][A-Za-z0-9_-]+):(.*)", spec, flags=re.DOTALL)
    if match is None:
        return None, spec
    prefix = match.group(1).lower()
    if prefix not in known:
        raise CorpusError(
            f"corpus spec {spec!r}: unknown format {prefix!r} (and no such path); "
            f"use one of {', '.join(f + ':' for f in known)} or a path"
        )
    return prefix, match.group(2)


def _existing_path(path_text: str, spec: str) -> Path:
    if not path_text:
        raise CorpusError(f"corpus spec {spec!r}: no path given")
    path = Path(path_text).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus spec {spec!r}: no such file or directory: {path}")
    return path
