"""Unpickling plain data at a bounded cost: no code runs, and memory stays in proportion to
the file.

``find_class`` refusing every global blocks code, but not memory: a memo index ``n`` makes
the C unpickler allocate ``16 * n`` bytes at once, so the 9-byte pickle
``b"\\x80\\x02]r\\xff\\xff\\xff\\x07."`` (index 2**27) takes 2 GB, and a length field makes it
allocate that length before reading. ``check_pickle`` walks the opcodes before the unpickler
runs: it refuses a memo index the file cannot have reached and a length (or frame) running
past the end of the file, which is read whole first (at most ``MAX_FILE_BYTES``). Every other
opcode costs memory in proportion to its own bytes.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
from pathlib import Path
from typing import Any, BinaryIO

from rasa_hred.corpora.base import MAX_FILE_BYTES, CorpusError, read_at_most, read_bytes, shown


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data (lists, tuples, dicts, numbers, strings, bytes) and nothing else:
    every global lookup (classes, functions such as ``os.system``) is refused."""

    def __init__(self, file: BinaryIO, source: str) -> None:
        # Python 2 pickles (MovieTriples was written with cPickle) hold byte strings; keep them
        # as bytes instead of guessing an encoding here.
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        raise CorpusError(
            f"{self._source}: refuses to unpickle {module}.{name}: only plain lists, tuples, "
            "numbers and strings are accepted (the file may be malicious or not a corpus file)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise CorpusError(f"{self._source}: refuses to unpickle a persistent object reference")


def restricted_load(path_or_file: str | Path | BinaryIO) -> object:
    """Load a pickle holding only plain data; anything that needs a global (a class, a
    function) raises :class:`CorpusError`, as do missing, truncated, corrupt and oversized
    files and memo indexes past what the file can hold. A stream is read to its end."""
    if isinstance(path_or_file, (str, Path)):
        path = Path(path_or_file)
        return _load_bytes(read_bytes(path, MAX_FILE_BYTES), str(path))
    source = str(getattr(path_or_file, "name", "<pickle stream>"))
    return _load_bytes(read_at_most(path_or_file, MAX_FILE_BYTES, source), source)


def _load_bytes(data: bytes, source: str) -> object:
    check_pickle(data, source)
    try:  # buffered: the C unpickler reads ahead (a bare BytesIO makes it twice as slow)
        return _DataOnlyUnpickler(io.BufferedReader(io.BytesIO(data)), source).load()
    except CorpusError:
        raise
    except EOFError:
        raise CorpusError(f"{source}: truncated or empty pickle file") from None
    except RecursionError:
        raise CorpusError(f"{source}: pickle nested too deeply") from None
    except MemoryError:
        raise CorpusError(f"{source}: pickle too large to load") from None
    except Exception as error:  # UnpicklingError, ValueError, KeyError, ... on corrupt data
        raise CorpusError(
            f"{source}: corrupt or unsupported pickle ({type(error).__name__}: {error})"
        ) from None


# --- the opcode walk ----------------------------------------------------------------------

_STOP, _PUT, _LONG_BINPUT, _FRAME = ord("."), ord("p"), ord("r"), 0x95
# Opcodes that hash what they put into a dict or set: C's tuple hash recurses without a
# depth check, so a key of tuples nested a million deep (1 MB of TUPLE1) crashes the process.
_HASHING = frozenset(ord(code) for code in "dsu\x90\x91")
_MAX_TUPLE_NESTING = 1000
_TUPLE_MAKERS = frozenset({"EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"})

_FIXED: dict[int, int] = {}  # opcode -> bytes of its argument
_COUNTED: dict[int, tuple[int, bool]] = {}  # opcode -> (bytes of its length field, signed)
_LINES: dict[int, int] = {}  # opcode -> number of newline-terminated arguments
_LENGTH_FIELDS = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}
for _op in pickletools.opcodes:
    _code = ord(_op.code)
    if _op.arg is None or _op.arg.n >= 0:
        _FIXED[_code] = _op.arg.n if _op.arg is not None else 0
    elif _op.arg.n == pickletools.UP_TO_NEWLINE:
        _LINES[_code] = 2 if _op.arg is pickletools.stringnl_noescape_pair else 1
    else:
        _COUNTED[_code] = _LENGTH_FIELDS[_op.arg.n]


def _run_pattern() -> re.Pattern[bytes]:
    """Runs of fixed-size opcodes that need no check, matched in C: the walk's Python loop
    then turns once per memo entry or string, not once per opcode (the repeat bound keeps the
    regex engine's memory small)."""
    by_size: dict[int, list[int]] = {}
    for code, size in _FIXED.items():
        if code not in (_STOP, _LONG_BINPUT, _FRAME, *_HASHING):
            by_size.setdefault(size, []).append(code)
    # Small integers (BININT1, BININT2) first: a MovieTriples file is mostly those.
    alternatives = [
        b"[" + b"".join(re.escape(bytes([code])) for code in sorted(codes)) + b"]" + b"." * size
        for size, codes in sorted(by_size.items(), key=lambda item: (item[0] == 0, item[0]))
    ]
    return re.compile(b"(?:" + b"|".join(alternatives) + b"){0,65536}", re.DOTALL)


_RUN = _run_pattern()


def check_pickle(data: bytes, source: str) -> None:
    """Refuse what would make the unpickler allocate more than the file holds, or crash:

    - a memo index (PUT, LONG_BINPUT) at or past its own byte offset: every memoized object
      was made by an opcode of at least one byte before it, so no pickle a pickler wrote gets
      there, and the memo costs at most 16 bytes per byte of file, like the data itself;
    - a string, bytes, long or frame length running past the end of ``data``;
    - when the pickle builds dicts or sets: tuples nested more than 1000 deep.

    The walk follows the opcodes the unpickler will run and stops where it would stop: at
    STOP, at an unknown opcode, or where the data ends (the unpickler reports those). It costs
    about as much as the unpickling (1.4 s for a 30 MB MovieTriples file, which has no dicts
    or sets: the slower nesting walk is for other pickles)."""
    if _check_sizes(data, source):
        _check_tuple_nesting(data, source)


def _check_sizes(data: bytes, source: str) -> bool:
    """The memo index and length checks; whether an opcode hashing into a dict or set ran."""
    hashing = False
    pos, end = 0, len(data)
    while True:
        match = _RUN.match(data, pos)
        pos = match.end() if match is not None else pos
        if pos >= end or data[pos] == _STOP:
            return hashing
        code = data[pos]
        if code == _LONG_BINPUT:
            if pos + 5 > end:
                return hashing
            _check_index(int.from_bytes(data[pos + 1 : pos + 5], "little"), pos, source)
            pos += 5
        elif code == _FRAME:  # the frame's opcodes follow: only its length is checked
            _check_length(int.from_bytes(data[pos + 1 : pos + 9], "little"), pos, 9, end, source)
            pos += 9
        elif code in _FIXED:  # hashing, or where a run stopped at its repeat bound
            hashing = hashing or code in _HASHING
            pos += 1 + _FIXED[code]
        elif code in _COUNTED:
            size, signed = _COUNTED[code]
            length = int.from_bytes(data[pos + 1 : pos + 1 + size], "little", signed=signed)
            if length < 0:
                return hashing
            _check_length(length, pos, 1 + size, end, source)
            pos += 1 + size + length
        elif code in _LINES:
            start = pos
            for _ in range(_LINES[code]):
                pos = data.find(b"\n", pos + 1)
                if pos < 0:
                    return hashing
            if code == _PUT:
                _check_index(_decimal(data[start + 1 : pos], source), start, source)
            pos += 1
        else:
            return hashing


def _check_tuple_nesting(data: bytes, source: str) -> None:
    """Follow the unpickler's stack, memo and marks, keeping for each object only how deeply
    tuples nest in it (a list, dict or set ends a chain: hashing stops there), and refuse a
    tuple nested deeper than ``_MAX_TUPLE_NESTING``."""
    stack: list[int] = []
    marks: list[int] = []
    memo: dict[int, int] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name == "STOP":
                return
            if name == "MARK":
                marks.append(len(stack))
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, 0) if isinstance(arg, int) else 0)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                index = len(memo) if name == "MEMOIZE" else arg
                if isinstance(index, int):
                    memo[index] = stack[-1] if stack else 0
            elif name == "DUP":
                stack.append(stack[-1] if stack else 0)
            elif name == "POP" and marks and marks[-1] == len(stack):
                marks.pop()  # as in the C unpickler: POP at a mark drops the mark
            else:
                popped: list[int] = []
                below = len(op.stack_before)
                if pickletools.markobject in op.stack_before:
                    if not marks:
                        return  # the unpickler fails here
                    mark = marks.pop()
                    popped = stack[mark:]
                    del stack[mark:]
                    below = op.stack_before.index(pickletools.markobject)
                if below:
                    popped += stack[-below:]
                    del stack[-below:]
                depth = 1 + max(popped, default=0) if name in _TUPLE_MAKERS else 0
                if depth > _MAX_TUPLE_NESTING:
                    raise CorpusError(
                        f"{source}: refuses tuples nested more than {_MAX_TUPLE_NESTING} deep "
                        "in a pickle with dicts or sets (hashing them would crash Python)"
                    )
                stack += [depth] * len(op.stack_after)
    except ValueError:  # an unknown opcode or truncated data: the unpickler fails there too
        return


def _decimal(text: bytes, source: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CorpusError(f"{source}: corrupt pickle: memo index {shown(text)}") from None


def _check_length(length: int, offset: int, header: int, end: int, source: str) -> None:
    if offset + header + length > end:
        raise CorpusError(
            f"{source}: truncated or corrupt pickle: {length} bytes announced at byte {offset} "
            f"run past the end of the file ({end} bytes)"
        )


def _check_index(index: int, offset: int, source: str) -> None:
    if index >= offset:
        raise CorpusError(
            f"{source}: refuses the pickle memo index {shown(index)} at byte {offset}: the file "
            f"cannot have made that many objects by then (the unpickler would allocate "
            f"{shown(16 * index)} bytes for it)"
        )
