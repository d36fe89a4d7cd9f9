"""Serban's text form: one dialogue per line, utterances separated by tabs or by ``</s>``
(``<s>``/``</s>`` markers are stripped)."""

from __future__ import annotations

import re
from pathlib import Path

from rasa_hred.corpora.base import CorpusError, Dialogue, DialogueCollector, read_bytes

TEXT_SUFFIXES = (".txt", ".tsv", ".dialogues")

_SEPARATOR_RE = re.compile(r"\t|</s>")
_BOS_RE = re.compile(r"(?<!\S)<s>(?!\S)")


def load_text(path: Path, collector: DialogueCollector) -> list[Dialogue]:
    raw = read_bytes(path)
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
        utterances = [_BOS_RE.sub(" ", part) for part in _SEPARATOR_RE.split(line)]
        dialogue = collector.dialogue(utterances, f"{path}")
        if dialogue is not None:
            dialogues.append(dialogue)
    return dialogues
