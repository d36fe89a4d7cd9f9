"""DailyDialog (Li et al., 2017): ``dialogues_text.txt``, one dialogue per line, each utterance
followed by ``__eou__`` (end of utterance), UTF-8.

The split files of the release (``dialogues_train.txt``, ...) have the same form. A line that
does not end with ``__eou__`` is taken for a truncated or foreign record and is an error.
"""

from __future__ import annotations

import re
from pathlib import Path

from rasa_hred.corpora.base import CorpusError, Dialogue, DialogueCollector
from rasa_hred.corpora.lines import first_line, numbered_lines

TEXT_FILE = "dialogues_text.txt"
END_OF_UTTERANCE = "__eou__"

_EOU_WORD_RE = re.compile(rf"(?<!\S){END_OF_UTTERANCE}(?!\S)")


def is_dailydialog(path: Path) -> bool:
    """``dialogues_text.txt``, a directory holding it, or a ``.txt`` file whose first
    non-blank line has ``__eou__`` as a word (no other text format writes that marker)."""
    if path.is_dir():
        return (path / TEXT_FILE).is_file()
    if path.name == TEXT_FILE:
        return True
    line = first_line(path) if path.suffix.lower() == ".txt" else None
    return line is not None and _EOU_WORD_RE.search(line) is not None


def dailydialog_dialogues(path: Path, collector: DialogueCollector) -> list[Dialogue]:
    """One dialogue per line of ``path`` (or of the ``dialogues_text.txt`` of a directory)."""
    if path.is_dir():
        path = path / TEXT_FILE
    dialogues: list[Dialogue] = []
    for number, line in numbered_lines(path):
        if not line.rstrip().endswith(END_OF_UTTERANCE):
            raise CorpusError(
                f"{path}: line {number}: a DailyDialog line ends with {END_OF_UTTERANCE} "
                "(truncated, or not DailyDialog text?)"
            )
        dialogue = collector.dialogue(line.split(END_OF_UTTERANCE), str(path))
        if dialogue is not None:
            dialogues.append(dialogue)
    return dialogues
