"""Tokenizer, detokenizer and the word vocabulary of the HRED model.

Text is tokenized the way the MovieTriples corpus (Serban et al., 2016) is: lower case, every
punctuation character a token of its own (so ``I'm`` becomes ``i ' m`` and ``don't`` becomes
``don ' t``), numbers replaced by ``<number>``. Placeholders such as ``<person>`` stay whole.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from rasa_hred.errors import UserError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
PERSON, NUMBER, CONTINUED = "<person>", "<number>", "<continued_utterance>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS, PERSON, NUMBER, CONTINUED)
PLACEHOLDERS: tuple[str, ...] = (PERSON, NUMBER, CONTINUED)

VOCAB_FORMAT = "rasa-hred-vocab"
VOCAB_VERSION = 1
# A 100k-word vocabulary with frequencies is about 2 MB of JSON; a larger file is refused
# before it is read.
MAX_VOCAB_FILE_BYTES = 64 * 1024 * 1024

# --- tokenizer ----------------------------------------------------------------------------

# Characters that NFKC leaves alone but that MovieTriples writes as plain ASCII quotes.
_QUOTES = str.maketrans(
    {
        "\u2018": "'",  # left single quotation mark
        "\u2019": "'",  # right single quotation mark (the usual curly apostrophe)
        "\u201a": "'",  # single low-9 quotation mark
        "\u201b": "'",  # single high-reversed-9 quotation mark
        "\u2032": "'",  # prime
        "\u02bc": "'",  # modifier letter apostrophe
        "\u00b4": "'",  # acute accent used as an apostrophe
        "`": "'",
        "\u201c": '"',  # left double quotation mark
        "\u201d": '"',  # right double quotation mark
        "\u201e": '"',  # double low-9 quotation mark
        "\u201f": '"',  # double high-reversed-9 quotation mark
        "\u2033": '"',  # double prime
        "\u00ab": '"',  # guillemets
        "\u00bb": '"',
    }
)

# Tokens kept whole although they contain punctuation: the placeholders and <unk> (MovieTriples
# text contains both). <s>, </s> and <pad> are markers, not words: in text they are split up.
_WHOLE = (*PLACEHOLDERS, UNK)


def _char_class(predicate: Callable[[str], bool]) -> str:
    """A regex character class body of the code points (BMP, SMP, SIP, tags, variation
    selectors) for which ``predicate`` holds."""
    ranges: list[tuple[int, int]] = []
    for start, stop in ((0, 0x30000), (0xE0000, 0xE0200)):
        for code in range(start, stop):
            if predicate(chr(code)):
                if ranges and ranges[-1][1] == code - 1:
                    ranges[-1] = (ranges[-1][0], code)
                else:
                    ranges.append((code, code))
    return "".join(
        re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
        for a, b in ranges
    )


# Combining marks (Mn, Mc, Me): Python's \w leaves them out, which would cut words of scripts
# written with vowel signs (Hindi, Tamil, Thai, ...) and decomposed accents into pieces.
_MARKS = _char_class(lambda char: unicodedata.category(char).startswith("M"))
# Control and format characters (zero-width spaces, BOMs, ...) other than whitespace.
_INVISIBLE_RE = re.compile(
    "["
    + _char_class(lambda char: unicodedata.category(char) in ("Cc", "Cf") and not char.isspace())
    + "]+"
)

_TOKEN_RE = re.compile(
    "|".join(
        [
            "(?P<whole>" + "|".join(re.escape(token) for token in _WHOLE) + ")",
            r"(?P<number>\d+(?:[.,]\d+)+(?![^\W_]))",  # 3.5, 1,000 (not 1.5x: that is a word)
            # letters, digits and combining marks: a word, or a number when all digits
            rf"(?P<word>(?:[^\W_]+|[{_MARKS}]+)+)",
            r"(?P<other>\S)",  # any other character is a token of its own
        ]
    )
)
_DIGITS_RE = re.compile(r"\d+")


def _normalise(text: str, max_chars: int | None = None) -> str:
    if max_chars is not None:
        text = text[:max_chars]
    if text.isascii():
        return _INVISIBLE_RE.sub("", text.replace("`", "'").lower())
    # Quotes are mapped before NFKC (which turns the acute accent into a combining mark) and
    # after it (NFKC turns some compatibility characters into quotes).
    text = unicodedata.normalize("NFKC", text.translate(_QUOTES))
    if max_chars is not None:
        text = text[:max_chars]  # NFKC can make a text 18 times longer (U+FDFA)
    # lower() can produce decomposed characters: normalise again.
    text = unicodedata.normalize("NFKC", text.translate(_QUOTES).lower())
    return _INVISIBLE_RE.sub("", text)


def tokenize(
    text: str,
    *,
    map_numbers: bool = True,
    max_chars: int | None = None,
    max_tokens: int | None = None,
) -> list[str]:
    """Split ``text`` into MovieTriples-style tokens.

    - NFKC-normalised, curly quotes and apostrophes turned into ASCII ``'`` and ``"``, lower
      case, control characters dropped, whitespace collapsed;
    - runs of letters and digits are words; every other character is a token of its own, so
      contractions split the way MovieTriples writes them: ``I'm`` -> ``i ' m``,
      ``don't`` -> ``don ' t``;
    - numbers (``2002``, ``3.5``, ``1,000``) become ``<number>`` when ``map_numbers``; a word
      that mixes letters and digits (``2nd``, ``mp3``) is kept as a word;
    - the placeholders (``<person>``, ``<number>``, ``<continued_utterance>``) and ``<unk>``
      stay single tokens.

    Idempotent: ``tokenize(" ".join(tokenize(x))) == tokenize(x)``, so already tokenized
    corpus text passes through unchanged.

    Bounds for text of any size (``ResponseGenerator.prepare_context`` uses both):
    ``max_chars`` reads only the first ``max_chars`` characters of ``text``, and of its NFKC
    form (which can be 18 times longer), so the work is linear in ``max_chars``, not in
    ``len(text)``; ``max_tokens`` gives ``tokenize(text)[:max_tokens]`` without scanning past
    that token.
    """
    tokens: list[str] = []
    if max_tokens is not None and max_tokens <= 0:
        return tokens
    for match in _TOKEN_RE.finditer(_normalise(text, max_chars)):
        kind = match.lastgroup
        token = match.group()
        if map_numbers and (
            kind == "number" or (kind == "word" and _DIGITS_RE.fullmatch(token) is not None)
        ):
            token = NUMBER
        tokens.append(token)
        if len(tokens) == max_tokens:
            break
    return tokens


# --- detokenizer --------------------------------------------------------------------------

_NO_SPACE_BEFORE = frozenset(",.!?;:)]}%")
_NO_SPACE_AFTER = frozenset("([{$#")
_CONTRACTION_SUFFIXES = frozenset({"s", "t", "m", "re", "ve", "ll", "d"})


def _is_word(token: str) -> bool:
    return bool(token) and (token[-1].isalnum())


def detokenize(
    tokens: Iterable[str] | str, *, placeholders: Mapping[str, str] | None = None
) -> str:
    """Turn tokens (a list, or a space-separated token string) back into readable text.

    Rules:

    - ``word ' s|t|m|re|ve|ll|d`` is rejoined into a contraction: ``don ' t`` -> ``don't``,
      ``i ' m`` -> ``i'm``;
    - no space before ``, . ! ? ; : ) ] } %`` and none after ``( [ { $ #``; a double quote
      opens and closes in turn (``he said " hi "`` -> ``he said "hi"``);
    - special tokens: a token that ``placeholders`` maps (e.g. ``{"<person>": "Ann"}``) is
      replaced by its value; every other special token (``<person>``, ``<number>``,
      ``<continued_utterance>``, ``<unk>``, ``<s>``, ``</s>``, ``<pad>``) is dropped, and the
      spacing is worked out as if it had never been there;
    - the case is left alone; the result has no leading or trailing whitespace.

    ``i ' m fine . how are you ?`` -> ``i'm fine. how are you?``
    """
    if isinstance(tokens, str):
        tokens = tokens.split()
    mapping = placeholders or {}
    words: list[str] = []
    for token in tokens:
        if token in mapping:
            value = str(mapping[token]).strip()
            if value:
                words.append(value)
        elif token not in SPECIAL_TOKENS and token.strip():
            words.append(token.strip())

    out: list[str] = []
    space_next = False  # whether the next token is preceded by a space
    quote_open = False
    i = 0
    while i < len(words):
        token = words[i]
        if (
            token == "'"
            and out
            and _is_word(out[-1])
            and i + 1 < len(words)
            and words[i + 1] in _CONTRACTION_SUFFIXES
        ):
            out.append("'" + words[i + 1])
            space_next = True
            i += 2
            continue
        if token == '"':
            if quote_open:
                out.append('"')
                space_next = True
            else:
                if out and space_next:
                    out.append(" ")
                out.append('"')
                space_next = False
            quote_open = not quote_open
            i += 1
            continue
        if token in _NO_SPACE_BEFORE:
            out.append(token)
        else:
            if out and space_next:
                out.append(" ")
            out.append(token)
        space_next = token not in _NO_SPACE_AFTER
        i += 1
    return "".join(out).strip()


# --- vocabulary ---------------------------------------------------------------------------


class Vocabulary:
    """A fixed mapping between tokens and ids; the index in ``tokens`` is the id.

    Every entry of ``SPECIAL_TOKENS`` must be present (anywhere: a MovieTriples dictionary keeps
    its own ids); ``Vocabulary.build`` puts them at ids 0..6.
    """

    def __init__(self, tokens: Sequence[str], frequencies: Sequence[int] | None = None) -> None:
        self.tokens: list[str] = list(tokens)
        for token in self.tokens:
            if not isinstance(token, str) or not token:
                raise ValueError(f"vocabulary tokens must be non-empty strings, got {token!r}")
        self._ids: dict[str, int] = {token: i for i, token in enumerate(self.tokens)}
        if len(self._ids) != len(self.tokens):
            duplicates = sorted(t for t, n in Counter(self.tokens).items() if n > 1)
            raise ValueError(f"duplicate vocabulary tokens: {duplicates[:10]}")
        missing = [token for token in SPECIAL_TOKENS if token not in self._ids]
        if missing:
            raise ValueError(f"vocabulary lacks the special tokens {missing}")
        if frequencies is not None:
            frequencies = [int(f) for f in frequencies]
            if len(frequencies) != len(self.tokens):
                raise ValueError(
                    f"{len(frequencies)} frequencies for {len(self.tokens)} vocabulary tokens"
                )
        self.frequencies: list[int] | None = frequencies
        self._pad_id = self._ids[PAD]
        self._unk_id = self._ids[UNK]
        self._bos_id = self._ids[BOS]
        self._eos_id = self._ids[EOS]

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def unk_id(self) -> int:
        return self._unk_id

    @property
    def bos_id(self) -> int:
        return self._bos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    __hash__ = None  # type: ignore[assignment]  # mutable container semantics

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    def id_of(self, token: str) -> int:
        """The id of ``token``; ``unk_id`` when it is not in the vocabulary."""
        return self._ids.get(token, self._unk_id)

    def token_of(self, token_id: int) -> str:
        """The token with id ``token_id`` (``IndexError`` when out of range)."""
        if not 0 <= token_id < len(self.tokens):
            raise IndexError(f"token id {token_id} outside the vocabulary (0..{len(self) - 1})")
        return self.tokens[token_id]

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Ids of ``tokens``; unknown tokens map to ``unk_id``. No ``<s>``/``</s>`` added."""
        ids = self._ids
        unk = self._unk_id
        return [ids.get(token, unk) for token in tokens]

    def decode(self, ids: Iterable[int], *, strip_special: bool = True) -> list[str]:
        """Tokens of ``ids``. With ``strip_special``, stops at ``</s>`` and drops ``<s>`` and
        ``<pad>`` (other special tokens such as ``<unk>`` are kept)."""
        tokens: list[str] = []
        for token_id in ids:
            token_id = int(token_id)
            if strip_special:
                if token_id == self._eos_id:
                    break
                if token_id in (self._bos_id, self._pad_id):
                    continue
            tokens.append(self.token_of(token_id))
        return tokens

    def encode_text(self, text: str) -> list[int]:
        """``encode(tokenize(text))``."""
        return self.encode(tokenize(text))

    @classmethod
    def build(
        cls,
        utterances: Iterable[Sequence[str]],
        *,
        max_size: int | None = 10000,
        min_freq: int = 1,
    ) -> Vocabulary:
        """Build a vocabulary from tokenized utterances (token lists; a string is split on
        whitespace).

        The special tokens come first (ids 0..6 in ``SPECIAL_TOKENS`` order), then the words by
        descending frequency, ties in alphabetical order, so the ids are deterministic.
        ``max_size`` counts words only (not the special tokens); ``None`` means no limit.
        Words seen fewer than ``min_freq`` times are left out.
        """
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be >= 0 or None, got {max_size}")
        counts: Counter[str] = Counter()
        for utterance in utterances:
            counts.update(utterance.split() if isinstance(utterance, str) else utterance)
        special_counts = [counts.pop(token, 0) for token in SPECIAL_TOKENS]
        words = sorted(
            (item for item in counts.items() if item[1] >= min_freq),
            key=lambda item: (-item[1], item[0]),
        )
        if max_size is not None:
            words = words[:max_size]
        tokens = [*SPECIAL_TOKENS, *(word for word, _ in words)]
        frequencies = [*special_counts, *(count for _, count in words)]
        return cls(tokens, frequencies)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON (``{"format": "rasa-hred-vocab", "version": 1, ...}``)."""
        payload = {
            "format": VOCAB_FORMAT,
            "version": VOCAB_VERSION,
            "tokens": self.tokens,
            "frequencies": self.frequencies,
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary written by ``save``; ``UserError`` when it is missing, invalid or
        larger than ``MAX_VOCAB_FILE_BYTES``."""
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > MAX_VOCAB_FILE_BYTES:
                raise UserError(
                    f"{path}: the vocabulary file has {size} bytes, more than the limit of "
                    f"{MAX_VOCAB_FILE_BYTES}"
                )
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"{path}: vocabulary file not found") from None
        except IsADirectoryError:
            raise UserError(f"{path}: is a directory, expected a vocabulary JSON file") from None
        except UnicodeDecodeError as error:
            raise UserError(
                f"{path}: not a vocabulary file (not UTF-8 at byte {error.start})"
            ) from None
        except OSError as error:
            raise UserError(f"{path}: cannot read the vocabulary file: {error.strerror}") from None
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(
                f"{path}: not a vocabulary file (invalid JSON at line {error.lineno}, "
                f"column {error.colno}: {error.msg})"
            ) from None
        except (ValueError, RecursionError) as error:  # an over-long integer, deep nesting
            raise UserError(f"{path}: not a vocabulary file ({error})") from None
        if not isinstance(payload, dict) or payload.get("format") != VOCAB_FORMAT:
            raise UserError(f'{path}: not a vocabulary file (no "format": "{VOCAB_FORMAT}")')
        if payload.get("version") != VOCAB_VERSION:
            raise UserError(
                f"{path}: vocabulary format version {payload.get('version')!r} is not supported "
                f"(expected {VOCAB_VERSION})"
            )
        tokens = payload.get("tokens")
        frequencies = payload.get("frequencies")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise UserError(f'{path}: "tokens" must be a list of strings')
        if frequencies is not None and (
            not isinstance(frequencies, list)
            or not all(isinstance(f, int) and not isinstance(f, bool) for f in frequencies)
        ):
            raise UserError(f'{path}: "frequencies" must be a list of integers or null')
        try:
            return cls(tokens, frequencies)
        except ValueError as error:
            raise UserError(f"{path}: invalid vocabulary: {error}") from None
