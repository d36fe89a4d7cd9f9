"""The BYU PCC Chit-Chat Challenge of the installed ``chitchat-dataset`` package (MIT):
human-human typed conversations, many opened from a prompt.

The data is one JSON object: conversation id -> ``{"messages": [[{"sender", "text", ...},
...], ...], "prompt": ..., ...}``, each inner list one sender's consecutive messages. A turn
is the text of all consecutive messages of one sender (joined by spaces, across list
boundaries too). The prompt opened the chat for both people and is not a turn.

About half the conversations are dropped chats: one person typed and nobody answered, or
one exchange and gone. Rule: a conversation is kept when it has at least ``MIN_TURNS`` turns
and two senders; the others are counted in the corpus's ``skipped``. On the package's 7,168
conversations this keeps 3,462 (``rasa-hred corpus stats chitchat``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rasa_hred.corpora.base import (
    CorpusError,
    Dialogue,
    DialogueCollector,
    merge_turns,
    package_directory,
    read_bytes,
    shown,
)

#: Fewer turns than this is a dropped chat (nobody answered, or one exchange and gone).
MIN_TURNS = 3


def chitchat_package_file() -> Path:
    """``dataset.json`` of the installed ``chitchat-dataset`` package."""
    return package_directory("chitchat_dataset", "chitchat-dataset") / "dataset.json"


def chitchat_dialogues(path: Path, collector: DialogueCollector) -> list[Dialogue]:
    """The kept conversations of a Chit-Chat Challenge ``dataset.json``, one turn a sender."""
    try:
        data = json.loads(read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorpusError(f"{path}: not a Chit-Chat Challenge JSON file: {error}") from None
    if not isinstance(data, dict):
        raise CorpusError(
            f"{path}: expected a JSON object of conversations, got {type(data).__name__}"
        )
    dialogues: list[Dialogue] = []
    for conversation_id, conversation in data.items():
        where = f"{path}: conversation {conversation_id}"
        turns = chitchat_turns(conversation, where)
        if len(turns) < MIN_TURNS or len({sender for sender, _ in turns}) < 2:
            collector.skip(f"{path}: dropped chat (fewer than {MIN_TURNS} turns or one sender)")
            continue
        dialogue = collector.dialogue((text for _, text in turns), str(path))
        if dialogue is not None:
            dialogues.append(dialogue)
    return dialogues


def chitchat_turns(conversation: Any, where: str) -> list[tuple[str, str]]:
    """``(sender, text)`` per turn: consecutive messages of one sender joined by spaces."""
    if not isinstance(conversation, dict) or not isinstance(conversation.get("messages"), list):
        raise CorpusError(f"{where}: expected an object with a 'messages' list")
    messages: list[tuple[str, str]] = []
    for index, group in enumerate(conversation["messages"]):
        if not isinstance(group, list):
            raise CorpusError(f"{where}, turn {index}: expected a list of messages")
        for message in group:
            if not (
                isinstance(message, dict)
                and isinstance(message.get("sender"), str)
                and isinstance(message.get("text"), str)
            ):
                raise CorpusError(
                    f"{where}, turn {index}: expected a message with string 'sender' and "
                    f"'text', got {shown(message)}"
                )
            if message["text"].strip():
                messages.append((message["sender"], message["text"].strip()))
    return merge_turns(messages)
