"""Scripted conversations and their transcripts, behind ``rasa-hred converse``.

A script file is YAML: a list of conversations, each ``{name, messages}`` with the user's
messages in order. Replaying one gives a transcript: every user message and what the bot
said to it, each bot message labelled with what produced it (``HRED``, or the Rasa policy
that chose the response). This module holds the Rasa-free parts: reading scripts (errors
name the file and line), replaying them on an HRED model directory's generator, the Markdown
and JSON forms, and putting the Markdown between the README's markers.
``rasa_hred.integration.converse`` replays scripts through a trained Rasa bot instead.

Replays are deterministic: beam search is, and before each conversation the random number
generators are reset (``reset_random``), so sampling and Rasa's random choice among a
response's variations repeat too.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from rasa_hred.errors import UserError
from rasa_hred.serving.chat import ChatSession
from rasa_hred.serving.generator import ResponseGenerator

#: The label of a reply the HRED generated.
HRED = "HRED"
#: The README lines the Markdown transcripts go between (``make samples``).
SECTION_START = "<!-- samples:start -->"
SECTION_END = "<!-- samples:end -->"
#: The seed the random number generators get before each conversation.
SEED = 0

_KEYS = ("name", "messages")
_YAML_NULL = "tag:yaml.org,2002:null"
# Characters that would change a line's Markdown formatting (a reply such as "*sigh*").
_MARKDOWN_SPECIAL = "\\`*_[]<>|~"


class ScriptError(UserError):
    """A script file that cannot be read, or an entry in it that is not a conversation."""


@dataclass(frozen=True)
class Script:
    """One scripted conversation: the user's messages in order (``line``: where it starts)."""

    name: str
    messages: tuple[str, ...]
    line: int


@dataclass
class BotMessage:
    """One thing the bot said; ``source`` is ``HRED`` or the deciding Rasa policy's label."""

    text: str
    source: str
    action: str | None = None
    policy: str | None = None
    buttons: list[str] = field(default_factory=list)


@dataclass
class Turn:
    """A user message and the bot's messages after it (``user`` is ``None`` for what the bot
    said before the first message)."""

    user: str | None
    bot: list[BotMessage]


@dataclass
class Transcript:
    name: str
    turns: list[Turn]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- script files -------------------------------------------------------------------------


def read_scripts(path: str | Path) -> list[Script]:
    """The conversations of a script file. Anything else is a ``ScriptError`` naming the file,
    the line and the conversation: messages are plain scalars (``- no`` is the text "no")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ScriptError(f"{path}: cannot read the script file ({error})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        what = "; ".join(str(part) for part in (error.context, error.problem) if part)
        raise ScriptError(f"{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as error:
        raise ScriptError(f"{path}: not valid YAML: {error}") from None
    if root is None:
        raise ScriptError(f"{path}: no conversations (expected a list of {{name, messages}})")
    if not isinstance(root, yaml.SequenceNode) or not root.value:
        raise ScriptError(
            f"{_at(path, root)}: expected a non-empty list of conversations, "
            "each {name: ..., messages: [...]}"
        )
    scripts = [_script(path, index, node) for index, node in enumerate(root.value, 1)]
    seen: dict[str, Script] = {}
    for script in scripts:
        if script.name in seen:
            raise ScriptError(
                f"{path}:{script.line}: conversation name {script.name!r} is used twice "
                f"(first at line {seen[script.name].line})"
            )
        seen[script.name] = script
    return scripts


def _script(path: Path, index: int, node: yaml.Node) -> Script:
    entry = f"{_at(path, node)}: conversation {index}"
    if not isinstance(node, yaml.MappingNode):
        raise ScriptError(f"{entry}: expected a mapping with 'name' and 'messages'")
    values: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if key not in _KEYS:
            raise ScriptError(
                f"{_at(path, key_node)}: conversation {index}: unknown key {key!r} "
                f"(a conversation has {' and '.join(_KEYS)})"
            )
        if key in values:
            raise ScriptError(f"{_at(path, key_node)}: conversation {index}: {key} given twice")
        values[key] = value_node
    for key in _KEYS:
        if key not in values:
            raise ScriptError(f"{entry}: no '{key}'")
    name = _text(values["name"])
    if name is None:
        raise ScriptError(f"{_at(path, values['name'])}: conversation {index}: empty or no name")
    entry = f"conversation {index} ({name!r})"
    messages_node = values["messages"]
    if not isinstance(messages_node, yaml.SequenceNode) or not messages_node.value:
        raise ScriptError(
            f"{_at(path, messages_node)}: {entry}: 'messages' must be a non-empty list of texts"
        )
    messages = []
    for number, message_node in enumerate(messages_node.value, 1):
        message = _text(message_node)
        if message is None:
            raise ScriptError(
                f"{_at(path, message_node)}: {entry}: message {number} is not a text "
                "(an empty line, a list or a mapping)"
            )
        messages.append(message)
    return Script(name, tuple(messages), node.start_mark.line + 1)


def _text(node: yaml.Node) -> str | None:
    """A scalar's text as written, stripped; ``None`` for an empty one or a non-scalar."""
    if not isinstance(node, yaml.ScalarNode) or node.tag == _YAML_NULL:
        return None
    text = str(node.value).strip()
    return text or None


def _at(path: Path, node: yaml.Node) -> str:
    return f"{path}:{node.start_mark.line + 1}"


# --- replay -------------------------------------------------------------------------------


def reset_random(seed: int = SEED) -> None:
    """Seed Python's and torch's random number generators (unseeded sampling draws from
    torch's), so that a conversation replays the same whatever ran before it."""
    random.seed(seed)
    torch.manual_seed(seed)


def replay_on_generator(
    generator: ResponseGenerator, scripts: Sequence[Script]
) -> list[Transcript]:
    """Each script as a chat with the HRED alone: every message is answered from the
    conversation so far (``ChatSession``: the user's lines and the replies, of which the
    generator reads its last ``max_turns``)."""
    transcripts = []
    for script in scripts:
        reset_random()
        session = ChatSession(generator)
        turns = [
            Turn(message, [BotMessage(session.reply_to(message).text, HRED)])
            for message in script.messages
        ]
        transcripts.append(Transcript(script.name, turns))
    return transcripts


# --- output -------------------------------------------------------------------------------


def render_markdown(transcripts: Sequence[Transcript], *, note: str = "") -> str:
    """The transcripts as Markdown: a heading per conversation, one list item per message,
    each bot message with its source in italics. ``note`` opens it as a paragraph."""
    blocks = [note.strip()] if note.strip() else []
    for number, transcript in enumerate(transcripts, 1):
        lines = [f"### {number}. {_escape(transcript.name)}", ""]
        for turn in transcript.turns:
            if turn.user is not None:
                lines.append(f"- **user:** {_escape(turn.user)}")
            for message in turn.bot:
                text = _escape(message.text)
                if message.buttons:
                    text += " (buttons: " + " · ".join(_escape(b) for b in message.buttons) + ")"
                lines.append(f"- **bot** _({_escape(message.source)})_: {text}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _escape(text: str) -> str:
    """``text`` on one line, with the characters that Markdown would act on escaped."""
    flat = " ".join(text.split())
    return "".join(f"\\{c}" if c in _MARKDOWN_SPECIAL else c for c in flat)


def transcripts_json(transcripts: Sequence[Transcript], **about: Any) -> dict[str, Any]:
    """The JSON form: ``about`` (where the transcripts come from) and the conversations."""
    return {**about, "conversations": [t.to_dict() for t in transcripts]}


def replace_section(text: str, body: str, *, source: str = "README") -> str:
    """``text`` with what lies between its ``SECTION_START`` and ``SECTION_END`` lines replaced
    by ``body``; everything outside the markers is kept byte for byte. Each marker must appear
    exactly once, the start first (``source`` names the file in the error)."""
    starts, ends = text.count(SECTION_START), text.count(SECTION_END)
    if starts != 1 or ends != 1:
        raise UserError(
            f"{source}: needs exactly one {SECTION_START} and one {SECTION_END} "
            f"(found {starts} and {ends})"
        )
    head, rest = text.split(SECTION_START)
    if SECTION_END in head:
        raise UserError(f"{source}: {SECTION_END} comes before {SECTION_START}")
    _, tail = rest.split(SECTION_END)
    return f"{head}{SECTION_START}\n{body.strip()}\n{SECTION_END}{tail}"
