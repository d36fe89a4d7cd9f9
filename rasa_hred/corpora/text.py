"""Serban's text form: one dialogue per line, utterances separated by tabs or by ``</s>``
(``<s>``/``</s>`` markers are stripped)."""

from __future__ import annotations

import re
from pathlib import Path

from rasa_hred.corpora.base import Dialogue, DialogueCollector
from rasa_hred.corpora.lines import numbered_lines

TEXT_SUFFIXES = (".txt", ".tsv", ".dialogues")

_SEPARATOR_RE = re.compile(r"\t|</s>")
_BOS_RE = re.compile(r"(?<!\S)<s>(?!\S)")


def load_text(path: Path, collector: DialogueCollector) -> list[Dialogue]:
    dialogues: list[Dialogue] = []
    for _, line in numbered_lines(path):
        utterances = [_BOS_RE.sub(" ", part) for part in _SEPARATOR_RE.split(line)]
        dialogue = collector.dialogue(utterances, f"{path}")
        if dialogue is not None:
            dialogues.append(dialogue)
    return dialogues
