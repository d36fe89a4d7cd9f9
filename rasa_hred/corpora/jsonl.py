"""JSON Lines dialogues, UTF-8: one dialogue per line, a JSON list of turns.

A turn is a string, or an object with a ``"text"`` string and a ``"speaker"`` (a string or an
integer; other keys are ignored). In a dialogue of objects, consecutive turns of one speaker
are one turn (an empty text is no turn). One dialogue holds turns of one kind. Blank lines
are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rasa_hred.corpora.base import CorpusError, Dialogue, DialogueCollector, merge_turns, shown
from rasa_hred.corpora.lines import numbered_lines

SUFFIX = ".jsonl"


def is_jsonl(path: Path) -> bool:
    """A ``.jsonl`` file."""
    return path.is_file() and path.suffix.lower() == SUFFIX


def jsonl_dialogues(path: Path, collector: DialogueCollector) -> list[Dialogue]:
    """One dialogue per non-blank line of ``path``."""
    dialogues: list[Dialogue] = []
    for number, line in numbered_lines(path):
        where = f"{path}: line {number}"
        try:
            turns = json.loads(line)
        except ValueError as error:  # JSONDecodeError, or an integer too long to convert
            raise CorpusError(f"{where}: invalid JSON: {error}") from None
        except RecursionError:
            raise CorpusError(f"{where}: JSON nested too deeply") from None
        dialogue = collector.dialogue(jsonl_turns(turns, where), str(path))
        if dialogue is not None:
            dialogues.append(dialogue)
    return dialogues


def jsonl_turns(turns: Any, where: str) -> list[str]:
    """The texts of one line's turns: strings, or ``{speaker, text}`` objects merged by
    speaker."""
    if not isinstance(turns, list):
        raise CorpusError(f"{where}: expected a JSON list of turns, got {shown(turns)}")
    if all(isinstance(turn, str) for turn in turns):
        return turns
    for index, turn in enumerate(turns):
        if not _is_speaker_turn(turn):
            raise CorpusError(
                f"{where}: expected a list of strings or a list of {{speaker, text}} objects "
                f"(speaker a string or integer, text a string); turn {index} is {shown(turn)}"
            )
    spoken = ((turn["speaker"], turn["text"]) for turn in turns if turn["text"].strip())
    return [text for _, text in merge_turns(spoken)]


def _is_speaker_turn(turn: Any) -> bool:
    if not isinstance(turn, dict):
        return False
    speaker = turn.get("speaker")
    is_speaker = isinstance(speaker, (str, int)) and not isinstance(speaker, bool)
    return is_speaker and isinstance(turn.get("text"), str)
