"""What the user hears: Rasa's bot messages as SSML speech (pure: no Rasa, no Sanic).

- :func:`to_ssml` turns *all* bot messages Rasa sent (in order) into one
  ``<speak>...</speak>`` document. Only what can be heard is kept:

  * ``text`` is spoken. Whitespace runs become one space; characters XML forbids are
    removed; ``& < > " '`` are escaped, so bot texts are always plain text (SSML markup in
    a response is read out literally, never interpreted).
  * ``buttons`` (and quick replies, which Rasa collects as buttons) are read as a hint
    after the message's text: ``You can say: Comedy, Drama or Horror.`` Their payloads are
    kept for the next turn by :func:`button_choices` / :func:`match_button`, so saying a
    title works like clicking the button.
  * ``image``, ``attachment``, ``elements`` and ``custom`` cannot be spoken and are
    dropped.
  * Two messages are separated by ``<break strength="strong"/>`` (a sentence pause), so
    they never run together even when a text lacks a final full stop.
  * The whole document stays within :data:`MAX_SSML_CHARS` (Amazon's 8000-character
    limit on output speech): the speech is cut at a sentence end (or else a word
    boundary) and ``...`` is appended.

- :func:`button_choices` / :func:`match_button` remember a reply's buttons and map a
  spoken title back to its payload on the next turn.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "ELLIPSIS",
    "MAX_BUTTON_CHOICES",
    "MAX_SSML_CHARS",
    "button_choices",
    "button_hint",
    "escape_ssml",
    "match_button",
    "normalise_text",
    "speech_parts",
    "text_to_ssml",
    "to_ssml",
]

#: Amazon's limit on ``outputSpeech`` (and ``reprompt``) length; the whole SSML string,
#: tags included, is kept within it.
MAX_SSML_CHARS = 8000
#: Appended where speech was cut short.
ELLIPSIS = "..."
#: At most this many button payloads are remembered for the next turn.
MAX_BUTTON_CHOICES = 20

_SPEAK_OPEN = "<speak>"
_SPEAK_CLOSE = "</speak>"
_MESSAGE_BREAK = '<break strength="strong"/>'
_XML_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"}
_XML_SPECIAL_RE = re.compile(r"[&<>\"']")
# Characters that may not appear in an XML 1.0 document: C0 controls other than tab, line
# feed and carriage return (those are whitespace, collapsed below), lone surrogates, and the
# non-characters U+FFFE / U+FFFF.
_XML_INVALID_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_WHITESPACE_RE = re.compile(r"\s+")
_SENTENCE_END_RE = re.compile(r"[.!?…](?:[\"')\]]*)\s")
_TERMINAL_PUNCTUATION = ".!?…:;"


# --------------------------------------------------------------------------- speech


def normalise_text(text: Any) -> str:
    """A single-line, XML-safe plain text: whitespace runs become one space, characters XML
    forbids are removed, the ends are stripped. Non-strings give ``""``."""
    if not isinstance(text, str):
        return ""
    return _WHITESPACE_RE.sub(" ", _XML_INVALID_RE.sub("", text)).strip()


def escape_ssml(text: str) -> str:
    """Escape ``& < > " '`` for use as SSML text."""
    return _XML_SPECIAL_RE.sub(lambda match: _XML_ESCAPES[match.group(0)], text)


def _button_titles(buttons: Any) -> list[str]:
    if not isinstance(buttons, Sequence) or isinstance(buttons, (str, bytes)):
        return []
    titles = []
    for button in buttons:
        title = normalise_text(button.get("title")) if isinstance(button, Mapping) else ""
        if title:
            titles.append(title.rstrip(_TERMINAL_PUNCTUATION + ","))
    return [title for title in titles if title]


def button_hint(buttons: Any) -> str:
    """``You can say: A, B or C.`` for buttons' titles (``""`` when none has a title)."""
    titles = _button_titles(buttons)
    if not titles:
        return ""
    if len(titles) == 1:
        choices = titles[0]
    else:
        choices = ", ".join(titles[:-1]) + " or " + titles[-1]
    return f"You can say: {choices}."


def _message_speech(message: Any) -> str:
    if not isinstance(message, Mapping):
        return ""
    text = normalise_text(message.get("text"))
    hint = button_hint(message.get("buttons"))
    if text and hint:
        if text[-1] not in _TERMINAL_PUNCTUATION:
            text += "."
        return f"{text} {hint}"
    return text or hint


def speech_parts(messages: Iterable[Any] | None) -> list[str]:
    """The spoken (plain, normalised, unescaped) text of each message that has any."""
    parts = [_message_speech(message) for message in messages or ()]
    return [part for part in parts if part]


def _escaped_len(text: str) -> int:
    return len(text) + sum(len(_XML_ESCAPES[ch]) - 1 for ch in _XML_SPECIAL_RE.findall(text))


def _truncate(text: str, budget: int) -> str:
    """The longest start of ``text`` that, escaped and followed by :data:`ELLIPSIS`, fits in
    ``budget`` characters; cut at a sentence end if that keeps at least half of it, else at
    a word boundary. ``""`` when not even the ellipsis fits."""
    room = budget - len(ELLIPSIS)
    if room <= 0:
        return ""
    used, end = 0, 0
    for index, char in enumerate(text):
        used += len(_XML_ESCAPES.get(char, char))
        if used > room:
            break
        end = index + 1
    prefix = text[:end]
    cut = end
    if end < len(text):
        # Look one character past the prefix: a sentence may end exactly at the cut.
        sentence_ends = [m.end() for m in _SENTENCE_END_RE.finditer(text, 0, end + 1)]
        if sentence_ends and sentence_ends[-1] >= end // 2:
            cut = min(sentence_ends[-1], end)
        elif not text[end].isspace() and " " in prefix:
            cut = prefix.rindex(" ")
    kept = text[:cut].rstrip().rstrip(".,;:!?…-–— ")
    return kept + ELLIPSIS if kept else ELLIPSIS


def to_ssml(messages: Iterable[Any] | None, *, max_chars: int = MAX_SSML_CHARS) -> str:
    """One ``<speak>`` document with the speech of all ``messages`` (Rasa's collected
    bot messages: dicts with ``text``, ``buttons``, ``image``, ...), in order.

    The result never exceeds ``max_chars`` characters; when nothing is speakable it is
    ``<speak></speak>`` (see :func:`speech_parts` to test for that first).
    """
    budget = max_chars - len(_SPEAK_OPEN) - len(_SPEAK_CLOSE)
    if budget < len(ELLIPSIS):
        raise ValueError(f"max_chars={max_chars} leaves no room for speech")
    pieces: list[str] = []
    for part in speech_parts(messages):
        if pieces:
            if budget < len(_MESSAGE_BREAK) + len(ELLIPSIS):
                break
            budget -= len(_MESSAGE_BREAK)
            separator = _MESSAGE_BREAK
        else:
            separator = ""
        size = _escaped_len(part)
        if size <= budget:
            pieces.append(separator + escape_ssml(part))
            budget -= size
            continue
        pieces.append(separator + escape_ssml(_truncate(part, budget)))
        break
    return _SPEAK_OPEN + "".join(pieces) + _SPEAK_CLOSE


def text_to_ssml(text: str | None) -> str | None:
    """SSML for one configured text (launch, help, ...); ``None`` for an empty text."""
    if not normalise_text(text):
        return None
    return to_ssml([{"text": text}])


# --------------------------------------------------------------------------- buttons


def _match_key(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))


def button_choices(messages: Iterable[Any] | None) -> list[dict[str, str]]:
    """``[{"title", "payload"}]`` of the buttons in ``messages`` (at most
    :data:`MAX_BUTTON_CHOICES`), for the session attributes of the response."""
    choices: list[dict[str, str]] = []
    for message in messages or ():
        buttons = message.get("buttons") if isinstance(message, Mapping) else None
        if not isinstance(buttons, Sequence) or isinstance(buttons, (str, bytes)):
            continue
        for button in buttons:
            if not isinstance(button, Mapping):
                continue
            title = normalise_text(button.get("title"))
            payload = button.get("payload")
            if title and isinstance(payload, str) and payload.strip():
                choices.append({"title": title, "payload": payload.strip()})
            if len(choices) >= MAX_BUTTON_CHOICES:
                return choices
    return choices


def match_button(text: str, choices: Any) -> str | None:
    """The payload of the button whose title is what the user said (case, punctuation
    and spacing ignored), else ``None``. ``choices`` comes from the session attributes
    (see :func:`button_choices`); anything malformed there is ignored."""
    key = _match_key(text)
    if not key or not isinstance(choices, Sequence) or isinstance(choices, (str, bytes)):
        return None
    for choice in list(choices)[:MAX_BUTTON_CHOICES]:
        if not isinstance(choice, Mapping):
            continue
        title, payload = choice.get("title"), choice.get("payload")
        if (
            isinstance(title, str)
            and isinstance(payload, str)
            and payload.strip()
            and _match_key(title) == key
        ):
            return payload.strip()
    return None
