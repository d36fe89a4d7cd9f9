"""The reply service: text contexts in, safe display text out, for many conversations at once.

``ResponseGenerator`` is what the CLI (``respond``, ``chat``), the Rasa policy and the NLG
server share, so that the same conversation gets the same context and the same reply
whichever way it arrives:

- ``prepare_context`` holds the context rules (last ``max_turns`` non-empty utterances, each
  tokenized and cut to ``max_utterance_tokens``, as ``<s> .. </s>`` ids), with a bounded
  cost for utterances of any length;
- ``generate`` / ``generate_n_best`` decode many conversations in one batch (thread-safe:
  one lock around the model) and apply the safety valves: a blocklist of words or phrases a
  reply may not contain (the next-best candidate is taken, ``fallback_reply`` when none is
  clean), a maximum length in characters (cut at a word boundary, or skipped), and never an
  empty text;
- ``agenerate`` is the asyncio entry point: requests that arrive while a batch runs are
  decoded together as the next batch (up to ``max_batch_size``) in a worker thread,
  so the event loop never waits on a forward pass (``rasa_hred.serving.batcher``).

The model runs in one floating-point type, its weights converted once at load: ``dtype="auto"``
picks bfloat16 where the hardware multiplies it natively (``rasa_hred.core.precision``).
"""

from __future__ import annotations

import logging
import math
import reprlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rasa_hred.core.checkpoint import CheckpointError, load_model, resolve_device
from rasa_hred.core.decoding import DecodingConfig, DecodingError, Hypothesis, decode
from rasa_hred.core.model import HRED
from rasa_hred.core.precision import describe, resolve_dtype
from rasa_hred.core.vocab import Vocabulary, detokenize, tokenize
from rasa_hred.errors import UserError
from rasa_hred.serving.batcher import BatchStats, MicroBatcher

logger = logging.getLogger(__name__)

DEFAULT_FALLBACK = "Sorry, I don't know what to say."
DEFAULT_MAX_TURNS = 9  # training windows hold 10 turns: 9 of context and the reply
DEFAULT_MAX_UTTERANCE_TOKENS = 50  # as in training
# An utterance is read up to this many characters per token of ``max_utterance_tokens``
# (1000 characters for 50 tokens), before and after NFKC normalisation, so that a 1 MB message
# costs what a long normal one does (and keeps the event loop free in ``agenerate``). Ordinary
# text has about 5 characters per token, so its first tokens are never cut differently.
MAX_CHARS_PER_TOKEN = 20
DEFAULT_MAX_REPLY_CHARS = 500

Overlong = Literal["cut", "skip"]


@dataclass
class Reply:
    """A reply ready to show: ``text`` is detokenized, ``tokens`` are the model's words
    (without ``</s>``). A fallback reply has ``fallback=True`` and NaN scores."""

    text: str
    tokens: list[str]
    log_prob: float
    token_log_probs: list[float]
    score: float
    fallback: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (non-finite numbers become None)."""

        def number(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {
            "text": self.text,
            "score": number(self.score),
            "log_prob": number(self.log_prob),
            "tokens": self.tokens,
            "token_log_probs": [number(v) for v in self.token_log_probs],
            "fallback": self.fallback,
        }


class ResponseGenerator:
    """Generates replies from an HRED model and its vocabulary (see the module docstring)."""

    def __init__(
        self,
        model: HRED,
        vocabulary: Vocabulary,
        *,
        decoding: DecodingConfig | None = None,
        dtype: torch.dtype | str | None = None,
        max_turns: int = DEFAULT_MAX_TURNS,
        max_utterance_tokens: int = DEFAULT_MAX_UTTERANCE_TOKENS,
        blocklist: Sequence[str] = (),
        fallback_reply: str = DEFAULT_FALLBACK,
        max_reply_chars: int | None = DEFAULT_MAX_REPLY_CHARS,
        overlong: Overlong = "cut",
        placeholders: Mapping[str, str] | None = None,
        batching: bool = True,
        batch_wait_ms: float = 0.0,
        max_batch_size: int = 32,
    ) -> None:
        if len(vocabulary) != model.config.vocab_size:
            raise ValueError(
                f"the vocabulary has {len(vocabulary)} tokens, the model {model.config.vocab_size}"
            )
        if max_turns < 0 or max_utterance_tokens < 1:
            raise ValueError("max_turns must be >= 0 and max_utterance_tokens >= 1")
        if not fallback_reply.strip():
            raise ValueError("fallback_reply must not be empty")
        if overlong not in ("cut", "skip"):
            raise ValueError(f"overlong must be 'cut' or 'skip', not {overlong!r}")
        self.device = model.embedding.weight.device
        if dtype is not None:  # the generator owns its model: convert it once, in place
            model = model.to(resolve_dtype(dtype, self.device))
        self.model = model.eval()
        self.dtype = model.embedding.weight.dtype
        self.vocabulary = vocabulary
        self.decoding = decoding or DecodingConfig()
        self.max_turns = max_turns
        self.max_utterance_tokens = max_utterance_tokens
        self.max_utterance_chars = MAX_CHARS_PER_TOKEN * max_utterance_tokens
        self.blocklist = [b for b in (tuple(tokenize(w)) for w in blocklist) if b]
        self.fallback_reply = fallback_reply.strip()
        self.max_reply_chars = max_reply_chars
        self.overlong = overlong
        self.placeholders = dict(placeholders or {})
        self._lock = threading.Lock()
        self._batcher: MicroBatcher[list[list[int]], Reply] = MicroBatcher(
            self._generate_batch,
            enabled=batching,
            batch_wait_ms=batch_wait_ms,
            max_batch_size=max_batch_size,
            thread_name="rasa-hred-generate",
        )

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        device: str | torch.device = "auto",
        *,
        dtype: torch.dtype | str = "auto",
        decoding: DecodingConfig | None = None,
        max_turns: int | None = None,
        max_utterance_tokens: int | None = None,
        **options: Any,
    ) -> ResponseGenerator:
        """Load a model directory. Unset options come from its ``config.json``: decoding
        defaults under ``decoding``, the context limits from ``training``. ``dtype``:
        ``auto`` (bfloat16 on hardware with bf16 units, else float32), ``float32`` or
        ``bfloat16``; the choice is logged. Errors are ``UserError``s (``CheckpointError`` for
        the model directory)."""
        resolved_device = resolve_device(device)
        try:
            resolved_dtype = resolve_dtype(dtype, resolved_device)
        except ValueError as error:
            raise UserError(str(error)) from None
        loaded = load_model(model_dir, device=resolved_device)
        training = loaded.extra.get("training") or {}
        if not isinstance(training, Mapping):
            raise CheckpointError(f"{model_dir}: config.json 'training' is not a mapping")
        if decoding is None:
            stored = loaded.extra.get("decoding")
            if stored is not None:
                if not isinstance(stored, Mapping):
                    raise CheckpointError(f"{model_dir}: config.json 'decoding' is not a mapping")
                try:
                    decoding = DecodingConfig.from_dict(stored)
                except (DecodingError, TypeError) as error:
                    raise CheckpointError(f"{model_dir}: config.json 'decoding': {error}") from None
        logger.info(f"HRED {model_dir}: inference in {describe(resolved_dtype, resolved_device)}")
        if max_turns is None:
            window = _stored_count(training, "max_turns", DEFAULT_MAX_TURNS + 1, model_dir)
            max_turns = max(1, window - 1)  # a training window holds the reply too
        if max_utterance_tokens is None:
            max_utterance_tokens = _stored_count(
                training, "max_utterance_tokens", DEFAULT_MAX_UTTERANCE_TOKENS, model_dir
            )
        return cls(
            loaded.model,
            loaded.vocabulary,
            decoding=decoding,
            dtype=resolved_dtype,
            max_turns=max_turns,
            max_utterance_tokens=max_utterance_tokens,
            **options,
        )

    # --- context ----------------------------------------------------------------------

    def prepare_context(self, utterances: Sequence[str]) -> list[list[int]]:
        """The model's context for a conversation so far (oldest utterance first).

        Utterances that tokenize to nothing are dropped, then the last ``max_turns`` are
        kept, each cut to its first ``max_utterance_tokens`` tokens (as in training) and
        wrapped in ``<s> .. </s>``. An empty result is fine: the model then opens the
        conversation. Only the first ``max_utterance_chars`` characters of an utterance are
        read, so the cost per utterance is bounded whatever its length."""
        if isinstance(utterances, str):
            raise TypeError("a context is a list of utterances, not a single string")
        for utterance in utterances:
            if not isinstance(utterance, str):
                raise TypeError(f"utterances must be strings, got {type(utterance).__name__}")
        kept: list[list[str]] = []  # newest first; only as many as needed are tokenized
        for utterance in reversed(utterances):
            if len(kept) == self.max_turns:
                break
            tokens = tokenize(
                utterance,
                max_chars=self.max_utterance_chars,
                max_tokens=self.max_utterance_tokens,
            )
            if tokens:
                kept.append(tokens)
        v = self.vocabulary
        return [[v.bos_id, *v.encode(tokens), v.eos_id] for tokens in reversed(kept)]

    # --- generation -------------------------------------------------------------------

    def generate(self, contexts: Sequence[Sequence[str]], **decoding: Any) -> list[Reply]:
        """One reply per context, all decoded in one batch. ``decoding`` overrides fields
        of the generator's ``DecodingConfig`` for this call."""
        return [replies[0] for replies in self.generate_n_best(contexts, 1, **decoding)]

    def generate_n_best(
        self, contexts: Sequence[Sequence[str]], n: int, **decoding: Any
    ) -> list[list[Reply]]:
        """Up to ``n`` clean replies per context, best first (at least one: the fallback)."""
        if isinstance(contexts, str):
            raise TypeError("contexts must be a list of contexts (lists of utterances)")
        prepared = [self.prepare_context(context) for context in contexts]
        return self._generate_ids(prepared, n, self._config(decoding))

    def _config(self, overrides: Mapping[str, Any]) -> DecodingConfig:
        return self.decoding.replace(**overrides) if overrides else self.decoding

    def _generate_ids(
        self, contexts: list[list[list[int]]], n: int, config: DecodingConfig
    ) -> list[list[Reply]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, not {n}")
        if not contexts:
            return []
        if config.method == "greedy":
            search = config.replace(n_best=1)
        else:  # spare candidates for the safety valves to fall back on
            width = max(n, config.beam_size)
            search = config.replace(beam_size=width, n_best=width)
        with self._lock:
            found = decode(self.model, contexts, search, vocabulary=self.vocabulary)
        return [self._replies(hypotheses, n) for hypotheses in found]

    def _replies(self, hypotheses: Sequence[Hypothesis], n: int) -> list[Reply]:
        replies = []
        for hypothesis in hypotheses:
            reply = self._reply(hypothesis)
            if reply is not None:
                replies.append(reply)
                if len(replies) == n:
                    break
        return replies or [self.fallback()]

    def _reply(self, hypothesis: Hypothesis) -> Reply | None:
        """The display form of a hypothesis, or None when a safety valve rejects it."""
        tokens = self.vocabulary.decode(hypothesis.tokens)
        if self.blocked(tokens):
            return None
        text = detokenize(tokens, placeholders=self.placeholders)
        if self.max_reply_chars is not None and len(text) > self.max_reply_chars:
            if self.overlong == "skip":
                return None
            text = _cut(text, self.max_reply_chars)
        if not text.strip():
            return None
        return Reply(
            text=text,
            tokens=tokens,
            log_prob=hypothesis.log_prob,
            token_log_probs=list(hypothesis.token_log_probs),
            score=hypothesis.score,
        )

    def blocked(self, tokens: Sequence[str]) -> bool:
        """Whether the tokens contain a blocklisted word or phrase (whole tokens, any case)."""
        for phrase in self.blocklist:
            size = len(phrase)
            for i in range(len(tokens) - size + 1):
                if tuple(tokens[i : i + size]) == phrase:
                    return True
        return False

    def fallback(self) -> Reply:
        return Reply(
            text=self.fallback_reply,
            tokens=tokenize(self.fallback_reply),
            log_prob=math.nan,
            token_log_probs=[],
            score=math.nan,
            fallback=True,
        )

    # --- asyncio micro-batching -------------------------------------------------------

    async def agenerate(self, context: Sequence[str]) -> Reply:
        """The reply to one conversation, batched with concurrent calls on the same loop.

        A request that finds the batcher idle runs at once; those that arrive meanwhile
        run together next (``rasa_hred.serving.batcher``), as one ``generate`` batch in the
        generator's worker thread. In float32 a request's reply is exactly what
        ``generate([context])`` gives (in bfloat16, up to rounding that depends on the
        batch's shape). A bad context raises here;
        if a batch fails, its requests are retried one by one so that an error reaches
        only the caller whose request caused it. With ``batching=False`` each request
        runs alone (in the same worker thread)."""
        if self._batcher.closed:
            raise RuntimeError("the ResponseGenerator is closed")
        return await self._batcher.submit(self.prepare_context(context))

    def _generate_batch(self, contexts: list[list[list[int]]]) -> list[Reply]:
        """The batcher's work: one reply per prepared context, with the current decoding."""
        return [replies[0] for replies in self._generate_ids(contexts, 1, self.decoding)]

    @property
    def batching(self) -> bool:
        return self._batcher.enabled

    @property
    def batch_wait_ms(self) -> float:
        return self._batcher.batch_wait_ms

    @property
    def max_batch_size(self) -> int:
        return self._batcher.max_batch_size

    @property
    def stats(self) -> BatchStats:
        """What the micro-batcher did so far."""
        return self._batcher.stats

    def close(self) -> None:
        """Stop the worker thread (after the batch it is running); idempotent."""
        self._batcher.close()


def _stored_count(
    training: Mapping[str, Any], key: str, default: int, model_dir: str | Path
) -> int:
    """A positive integer of config.json's ``training`` section (``default`` when absent)."""
    value = training.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(
            f"{model_dir}: config.json 'training.{key}' must be a positive integer, "
            f"got {reprlib.repr(value)}"
        )
    return value


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary (hard cut when the
    first word alone is longer)."""
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    space = head.rfind(" ")
    cut = head[:space] if space > 0 else text[:limit]
    return cut.rstrip(" ,;:-")
