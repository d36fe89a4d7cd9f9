"""PersonaChat / ConvAI2 (Zhang et al., 2018; Dinan et al., 2019) in ParlAI's text forms, UTF-8.

The numbered form (``train_self_original.txt`` and the like): every line is ``N text``, and
``N`` starts again at 1 for each dialogue. ``N your persona: ...`` and ``N partner's persona:
...`` lines describe the speakers and are not turns. Every other line is ``N partner
utterance<TAB>reply``, possibly followed by more tab-separated fields (a reward, ``|``-separated
candidate replies), which are not turns; a line without a tab is one turn.

The key-value form (ParlAI's ``ParlAIDialogTeacher`` files): every line is tab-separated
``key:value`` fields, ``text`` (lines joined by ``\\n``, persona lines among them) and
``labels`` (``|``-separated, the first is the reply) the turns, ``episode_done:True`` the end of
a dialogue. Other keys are ignored.

``__SILENCE__``, ParlAI's stand-in for a partner who has not spoken, is not a turn. The form of
a file is read from its first line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from rasa_hred.corpora.base import CorpusError, Dialogue, DialogueCollector, shown
from rasa_hred.corpora.lines import first_line, numbered_lines

PERSONA_PREFIXES = ("your persona:", "partner's persona:")
SILENCE = "__SILENCE__"
#: The keys whose values are turns in the key-value form.
TEXT_KEY, LABEL_KEYS = "text", ("labels", "eval_labels")

_NUMBERED_RE = re.compile(r"(\d+) (.*)", re.DOTALL)
_KEY_VALUE_START = f"{TEXT_KEY}:"


def is_personachat(path: Path) -> bool:
    """A ``.txt`` file whose first line opens a numbered dialogue with a persona line
    (``1 your persona: ...``) or is a key-value line with ``text:`` and ``labels:``."""
    line = first_line(path) if path.suffix.lower() == ".txt" else None
    if line is None:
        return False
    if line.startswith(_KEY_VALUE_START):
        return any(field.startswith("labels:") for field in line.split("\t"))
    return any(line.startswith(f"1 {prefix}") for prefix in PERSONA_PREFIXES)


def personachat_dialogues(path: Path, collector: DialogueCollector) -> list[Dialogue]:
    """The dialogues of a ParlAI text file, numbered or key-value (read from its first line)."""
    line = first_line(path)
    key_value = line is not None and line.startswith(_KEY_VALUE_START)
    episodes = _key_value_episodes(path) if key_value else _numbered_episodes(path)
    dialogues: list[Dialogue] = []
    for turns in episodes:
        dialogue = collector.dialogue(
            (turn for turn in turns if turn.strip() != SILENCE), str(path)
        )
        if dialogue is not None:
            dialogues.append(dialogue)
    return dialogues


def _numbered_episodes(path: Path) -> Iterable[list[str]]:
    turns: list[str] = []
    previous = 0
    for number, line in numbered_lines(path):
        match = _NUMBERED_RE.fullmatch(line)
        if match is None:
            raise CorpusError(
                f"{path}: line {number}: expected 'N text' (N the number of the line in its "
                f"dialogue), got {shown(line)}"
            )
        index, text = int(match.group(1)), match.group(2)
        if index == 1:
            if previous:
                yield turns
            turns = []
        elif index != previous + 1:
            raise CorpusError(
                f"{path}: line {number}: line number {index} does not follow {previous} "
                "(a dialogue's lines count up from 1)"
            )
        previous = index
        if not text.startswith(PERSONA_PREFIXES):
            turns += text.split("\t")[:2]
    if previous:
        yield turns


def _key_value_episodes(path: Path) -> Iterable[list[str]]:
    turns: list[str] = []
    for number, line in numbered_lines(path):
        message = _key_values(line, path, number)
        if TEXT_KEY not in message:
            raise CorpusError(f"{path}: line {number}: no '{TEXT_KEY}:' field")
        turns.append(_without_persona(_unescaped(message[TEXT_KEY])))
        label = next((message[key] for key in LABEL_KEYS if key in message), None)
        if label is not None:
            turns.append(_unescaped(label.split("|")[0]))
        if message.get("episode_done") == "True":
            yield turns
            turns = []
    if turns:
        yield turns


def _key_values(line: str, path: Path, number: int) -> dict[str, str]:
    message: dict[str, str] = {}
    for field in line.split("\t"):
        key, colon, value = field.partition(":")
        if not field:
            continue
        if not colon:
            raise CorpusError(
                f"{path}: line {number}: expected tab-separated key:value fields, got "
                f"{shown(field)}"
            )
        message[key] = value
    return message


def _unescaped(value: str) -> str:
    return value.replace("\\t", "\t").replace("\\n", "\n").replace("__PIPE__", "|")


def _without_persona(text: str) -> str:
    return " ".join(
        line for line in text.split("\n") if not line.lstrip().startswith(PERSONA_PREFIXES)
    )
