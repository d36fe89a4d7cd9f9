"""Rasa stories and rules YAML with end-to-end text (``- user: ...``, ``- bot: ...``);
consecutive turns of one speaker are merged, entity annotations keep their text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rasa_hred.corpora.base import (
    CorpusError,
    Dialogue,
    DialogueCollector,
    merge_turns,
    scalar_text,
    shown,
)

# [text](entity), [text]{"entity": ...}, [text][{...}]: keep the text.
_ENTITY_RE = re.compile(r"\[([^\[\]]*)\](?:\([^()]*\)|\{[^{}]*\}|\[[^\[\]]*\])")


def holds_stories(data: Any) -> bool:
    """Whether parsed YAML looks like a Rasa stories or rules file."""
    return isinstance(data, dict) and bool({"stories", "rules"} & set(data))


def rasa_dialogues(data: Any, path: Path, collector: DialogueCollector) -> list[Dialogue]:
    """The dialogues of one parsed Rasa stories/rules file."""
    if not holds_stories(data):
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
            where = f"{path}: {kind} {index}" + (
                f" ({shown(name)})" if isinstance(name, str) else ""
            )
            turns = _turns(item.get("steps"), where)
            dialogue = collector.dialogue([text for _, text in turns], str(path), kind)
            if dialogue is not None:
                dialogues.append(dialogue)
    return dialogues


def _turns(steps: Any, where: str) -> list[tuple[str, str]]:
    """(speaker, text) of a story's steps, consecutive turns of one speaker merged."""
    if steps is None or steps == "":
        steps = []
    if not isinstance(steps, list):
        raise CorpusError(f"{where}: 'steps' must be a list, got {type(steps).__name__}")
    turns: list[tuple[str, str]] = []  # merged at the end: one join per run of a speaker
    for step_index, step in enumerate(steps):
        if not isinstance(step, dict):
            raise CorpusError(
                f"{where}, step {step_index}: expected a mapping, got {type(step).__name__}"
            )
        for speaker in ("user", "bot"):
            if speaker not in step:
                continue
            text = scalar_text(step[speaker], f"{where}, step {step_index}")
            if speaker == "user":
                text = _ENTITY_RE.sub(r"\1", text)
            text = " ".join(text.split())
            if text:
                turns.append((speaker, text))
    return merge_turns(turns)
