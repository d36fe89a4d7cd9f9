"""chatterbot-corpus YAML (``conversations:``, a list of lists of texts), from a file, a
directory, or a language of the installed ``chatterbot-corpus`` package."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rasa_hred.corpora.base import (
    CorpusError,
    Dialogue,
    DialogueCollector,
    package_directory,
    scalar_text,
    yaml_files,
)


def holds_conversations(data: Any) -> bool:
    """Whether parsed YAML looks like a chatterbot corpus file."""
    return isinstance(data, dict) and "conversations" in data


def chatterbot_language_files(language: str, spec: str) -> tuple[Path, list[Path]]:
    """The directory and YAML files of ``language`` in the installed chatterbot-corpus."""
    data = _package_data_dir()
    directory = data / language
    if not re.fullmatch(r"[A-Za-z_-]+", language) or not directory.is_dir():
        available = sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
        raise CorpusError(
            f"corpus spec {spec!r}: no such file, directory or chatterbot-corpus language "
            f"{language!r} (languages: {', '.join(available) or 'none found'})"
        )
    files = yaml_files(directory)
    if not files:
        raise CorpusError(f"{directory}: no YAML files in the chatterbot-corpus language")
    return directory, files


def _package_data_dir() -> Path:
    return package_directory("chatterbot_corpus", "chatterbot-corpus") / "data"


def chatterbot_dialogues(data: Any, path: Path, collector: DialogueCollector) -> list[Dialogue]:
    """The dialogues of one parsed chatterbot YAML file."""
    if not holds_conversations(data):
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
        texts = [scalar_text(entry, f"{where}, entry {i}") for i, entry in enumerate(conversation)]
        dialogue = collector.dialogue(texts, str(path))
        if dialogue is not None:
            dialogues.append(dialogue)
    return dialogues
