"""Line-oriented corpus files: the numbered, decoded lines a loader reads, and the first
line a detector looks at.

Each line is decoded on its own so that bad bytes are reported with their line number, and
a detector reads only the head of a file, whatever its size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rasa_hred.corpora.base import CorpusError, read_bytes

#: How much of a file a detector reads to find its first line.
HEAD_BYTES = 64 * 1024


def numbered_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every non-blank line of ``path`` (read with
    :func:`~rasa_hred.corpora.base.read_bytes`), without its line ending; a UTF-8 byte-order
    mark is dropped. A line that is not valid ``encoding`` is an error naming it."""
    raw = read_bytes(path)
    offset = 0
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        try:
            line = line_bytes.decode(encoding)
        except UnicodeDecodeError as error:
            raise CorpusError(
                f"{path}: line {number}: not valid {encoding.upper()} "
                f"(byte offset {offset + error.start})"
            ) from None
        offset += len(line_bytes) + 1
        if number == 1:
            line = line.removeprefix("\ufeff")
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line


def first_line(path: Path) -> str | None:
    """The first non-blank line of a file, from its first ``HEAD_BYTES`` bytes decoded
    leniently; ``None`` for a directory, an unreadable file or one without such a line."""
    if not path.is_file():
        return None
    try:
        with path.open("rb") as file:
            head = file.read(HEAD_BYTES)
    except OSError:
        return None
    text = head.decode("utf-8", errors="replace").removeprefix("\ufeff")
    return next((line.rstrip("\r") for line in text.split("\n") if line.strip()), None)
