"""The Cornell Movie-Dialogs Corpus (Danescu-Niculescu-Mizil and Lee, 2011): a directory with
``movie_lines.txt`` and ``movie_conversations.txt``, fields separated by `` +++$+++ ``, text in
ISO-8859-1.

``movie_lines.txt``: ``lineID +++$+++ characterID +++$+++ movieID +++$+++ name +++$+++ text``;
``movie_conversations.txt``: ``char1 +++$+++ char2 +++$+++ movieID +++$+++ ['L194', ...]``,
one conversation a line, its lines in order. The id list is parsed by a strict pattern (never
evaluated). A conversation is one dialogue; consecutive lines of one character are one turn.

The text has Windows-1252 punctuation in the bytes 0x80-0x9F (``don\\x92t``, ``yes\\x96no``),
which ISO-8859-1 reads as invisible control codes the tokenizer drops (``dont``): those bytes
are read as Windows-1252.
"""

from __future__ import annotations

import re
from pathlib import Path

from rasa_hred.corpora.base import CorpusError, Dialogue, DialogueCollector, merge_turns, shown
from rasa_hred.corpora.lines import numbered_lines

LINES_FILE = "movie_lines.txt"
CONVERSATIONS_FILE = "movie_conversations.txt"
ENCODING = "iso-8859-1"

# The separator is " +++$+++ "; an empty last field leaves "+++$+++" at the end of the line,
# with or without its space, so fields are split on the separator without its trailing space.
_SEPARATOR = " +++$+++"
_ID_LIST_RE = re.compile(r"\[\s*(?:'[^'\s]+'(?:\s*,\s*'[^'\s]+')*\s*,?\s*)?\]")
_ID_RE = re.compile(r"'([^'\s]+)'")
#: ISO-8859-1's C1 control codes -> the Windows-1252 characters of those bytes (where defined).
_C1_AS_CP1252 = {
    code: bytes([code]).decode("cp1252")
    for code in range(0x80, 0xA0)
    if code not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)  # undefined in Windows-1252
}


def is_cornell(path: Path) -> bool:
    """A directory holding both files of the corpus."""
    return (path / LINES_FILE).is_file() and (path / CONVERSATIONS_FILE).is_file()


def cornell_dialogues(path: Path, collector: DialogueCollector) -> list[Dialogue]:
    """One dialogue per conversation of the corpus directory ``path``."""
    if not path.is_dir():
        raise CorpusError(
            f"{path}: expected the Cornell Movie-Dialogs directory ({LINES_FILE}, "
            f"{CONVERSATIONS_FILE})"
        )
    lines = _movie_lines(path / LINES_FILE)
    conversations = path / CONVERSATIONS_FILE
    dialogues: list[Dialogue] = []
    for number, line in numbered_lines(conversations, ENCODING):
        turns = []
        id_list = _fields(line, 4, conversations, number)[3]
        for line_id in _conversation_ids(id_list, conversations, number):
            if line_id not in lines:
                raise CorpusError(
                    f"{conversations}: line {number}: unknown line id {shown(line_id)} "
                    f"(not in {LINES_FILE})"
                )
            turns.append(lines[line_id])
        merged = merge_turns(turn for turn in turns if turn[1].strip())
        dialogue = collector.dialogue((text for _, text in merged), str(conversations))
        if dialogue is not None:
            dialogues.append(dialogue)
    return dialogues


def _movie_lines(path: Path) -> dict[str, tuple[str, str]]:
    """line id -> (character id, text)."""
    lines: dict[str, tuple[str, str]] = {}
    for number, line in numbered_lines(path, ENCODING):
        line_id, character, _, _, text = _fields(line, 5, path, number)
        if line_id in lines:
            raise CorpusError(f"{path}: line {number}: line id {shown(line_id)} appears twice")
        lines[line_id] = (character, text.translate(_C1_AS_CP1252))
    return lines


def _fields(line: str, count: int, path: Path, number: int) -> list[str]:
    parts = line.split(_SEPARATOR, count - 1)
    if len(parts) != count:
        raise CorpusError(
            f"{path}: line {number}: expected {count} fields separated by ' +++$+++ ', "
            f"got {len(parts)}"
        )
    return [*(part.strip() for part in parts[:-1]), parts[-1].removeprefix(" ")]


def _conversation_ids(field: str, path: Path, number: int) -> list[str]:
    """The line ids of a list such as ``['L194', 'L195']``, matched, never evaluated."""
    if _ID_LIST_RE.fullmatch(field.strip()) is None:
        raise CorpusError(
            f"{path}: line {number}: expected a list of line ids such as ['L194', 'L195'], "
            f"got {shown(field)}"
        )
    return _ID_RE.findall(field)
