"""Beam search, greedy decoding, sampling and MMI-antiLM reranking on HRED's step API.

Everything here works on token ids: ``decode(model, contexts, config)`` takes one context per
conversation (a list of ``<s> .. </s>`` utterances, possibly empty) and returns, for each, its
best hypotheses. Text, safety valves and batching of requests live in
``rasa_hred.serving.generator``.

How the search runs (the seed's HRED re-ran the whole prefix through the decoder at every
step; this never does):

- All conversations are decoded together: conversation ``b`` owns rows ``b*K .. b*K+K-1`` of
  every tensor (``K`` beams). The decoder's hidden state is carried from step to step and
  reordered with the surviving beams; the prefix is never fed again.
- Each step scores ``K * V`` continuations per conversation, takes the best ``2K``; a
  ``</s>`` among the first ``K`` of them finishes a hypothesis (it is set aside), and the
  best ``K`` others become the next beams. A conversation is done when it holds ``K``
  finished hypotheses, or ``n`` finished ones (``n`` = the candidates wanted) that no live
  beam can beat any more: log-probabilities only fall as a reply grows, so a live beam's
  best possible final score is its current total divided by the most favourable length
  penalty still reachable. Done conversations leave the batch (their rows are dropped).
- At ``max_length`` tokens the live beams end as they are (no ``</s>``).
- Scores: ``log p / lp(len)`` with ``lp = ((5 + len) / 6) ** alpha`` (Wu et al., 2016),
  ``len`` counting the ``</s>``; ``length_penalty="mean"`` uses the mean log-probability.
- Greedy decoding is the argmax path and equals a beam of one.
- Repeated n-grams are blocked: a token that would complete an n-gram the reply already
  contains gets probability zero. Banned tokens (``<unk>``, ``<pad>``, ``<s>`` and the
  placeholders by default) never appear.
- MMI-antiLM (Li et al., 2016): with ``mmi_lambda > 0`` the search collects ``beam_size``
  candidates and reranks them by ``score - lambda * log p_LM(first k tokens)``, where the
  language model is the same decoder with a zero context vector (HRED's context for an empty
  dialogue), run teacher-forced over all candidates in one batched pass.

The decoder math is the model's: every step is ``HRED.start_decoding(context).step`` (the
model's fast step, see ``rasa_hred.core.model.DecoderSteps``) and the MMI language model is
``HRED.target_log_probs``, the teacher-forced pass training uses. This module is only the
search. Batches above ``MAX_ROWS`` rows (``MAX_ROWS_CPU`` on a CPU) are decoded in chunks.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from rasa_hred.core import kernels
from rasa_hred.core.fields import check_known_keys
from rasa_hred.core.model import HRED, DecoderSteps, Memory
from rasa_hred.core.vocab import BOS, PAD, PLACEHOLDERS, SPECIAL_TOKENS, UNK, Vocabulary
from rasa_hred.errors import UserError

METHODS = ("beam", "greedy", "sample")
DEFAULT_BANNED: tuple[str, ...] = (UNK, PAD, BOS)
# Decoding runs at most this many rows (conversations x beams) at once; more are chunked.
# On a CPU, since beam search stopped writing [rows, vocabulary] float tensors and bf16
# products run on whole AMX tiles, larger chunks are faster per reply: 64 contexts at the
# seed shape, 2 cores, bf16, against chunks of 256 rows, 320 rows at beam 5 gave 1.2x the
# replies/s and 640-1,280 rows at beam 20 1.15-1.3x. A step at 1,024 rows holds 20 MB of
# bf16 logits.
MAX_ROWS = 16384
MAX_ROWS_CPU = 1024

_NEG_INF = float("-inf")


class DecodingError(UserError, ValueError):
    """An invalid decoding setting (a ValueError for library callers, one line in the CLI)."""


# --- configuration ------------------------------------------------------------------------


@dataclass
class DecodingConfig:
    """How to turn a context into replies; ``config.json`` may hold defaults under ``decoding``.

    ``force_length`` is for benchmarks: ``</s>`` is suppressed until that many tokens, then
    every reply stops there (the seed always ran a fixed number of steps).
    """

    method: str = "beam"  # "beam" | "greedy" | "sample"
    beam_size: int = 5
    n_best: int = 1
    max_length: int = 30  # tokens, </s> excluded
    min_length: int = 1
    length_penalty: float | str = 1.0  # GNMT alpha (0 = raw log-prob), or "mean"
    no_repeat_ngram: int = 3  # 0 = off
    banned_tokens: tuple[str, ...] = DEFAULT_BANNED
    allow_placeholders: bool = False  # placeholders are banned unless this is set
    mmi_lambda: float = 0.0  # 0 = off
    mmi_tokens: int = 5
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None
    force_length: int | None = None

    def __post_init__(self) -> None:
        self.banned_tokens = tuple(self.banned_tokens)
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.beam_size < 1:
            problems.append(f"beam_size must be >= 1, not {self.beam_size}")
        if self.n_best < 1:
            problems.append(f"n_best must be >= 1, not {self.n_best}")
        if self.method == "beam" and self.n_best > self.beam_size:
            problems.append(f"n_best ({self.n_best}) cannot exceed beam_size ({self.beam_size})")
        if self.method == "greedy" and self.n_best > 1:
            problems.append("greedy decoding gives one reply: use beam or sample for n_best > 1")
        if self.max_length < 1:
            problems.append(f"max_length must be >= 1, not {self.max_length}")
        if not 0 <= self.min_length <= self.max_length:
            problems.append(
                f"min_length must be between 0 and max_length ({self.max_length}), "
                f"not {self.min_length}"
            )
        if isinstance(self.length_penalty, str):
            if self.length_penalty != "mean":
                problems.append(
                    f"length_penalty must be a number or 'mean', not {self.length_penalty!r}"
                )
        elif not math.isfinite(float(self.length_penalty)):
            problems.append("length_penalty must be finite")
        if self.no_repeat_ngram < 0:
            problems.append(f"no_repeat_ngram must be >= 0, not {self.no_repeat_ngram}")
        if self.mmi_lambda < 0 or not math.isfinite(self.mmi_lambda):
            problems.append(f"mmi_lambda must be >= 0, not {self.mmi_lambda}")
        if self.mmi_tokens < 1:
            problems.append(f"mmi_tokens must be >= 1, not {self.mmi_tokens}")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, not {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, not {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], not {self.top_p}")
        if self.force_length is not None and self.force_length < 1:
            problems.append(f"force_length must be >= 1, not {self.force_length}")
        if problems:
            raise DecodingError("; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecodingConfig:
        """Build from a mapping (e.g. config.json's ``decoding``); unknown keys are an error."""
        check_known_keys(cls, data, "decoding option(s)", DecodingError)
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["banned_tokens"] = list(self.banned_tokens)
        return data

    def replace(self, **overrides: Any) -> DecodingConfig:
        """A copy with ``overrides`` applied (validated; unknown names are an error)."""
        check_known_keys(type(self), overrides, "decoding option(s)", DecodingError)
        return replace(self, **overrides)

    @property
    def num_candidates(self) -> int:
        """Hypotheses collected per context: ``n_best``, or ``beam_size`` for MMI reranking."""
        if self.mmi_lambda > 0 and self.method != "greedy":
            return max(self.n_best, self.beam_size)
        return self.n_best

    def banned_ids(self, vocabulary: Vocabulary | None, bos_id: int, pad_id: int) -> list[int]:
        """Ids never generated. Without a vocabulary the standard layout is assumed
        (``Vocabulary.build``: the special tokens at ids 0..6)."""
        tokens = list(self.banned_tokens)
        if not self.allow_placeholders:
            tokens += [p for p in PLACEHOLDERS if p not in tokens]
        ids = set()
        for token in tokens:
            if token == BOS:
                ids.add(bos_id)
            elif token == PAD:
                ids.add(pad_id)
            elif vocabulary is not None:
                if token in vocabulary:
                    ids.add(vocabulary.id_of(token))
            elif token in SPECIAL_TOKENS:
                ids.add(SPECIAL_TOKENS.index(token))
        return sorted(ids)

    def length_normaliser(self, length: Tensor | float) -> Tensor | float:
        """``lp(len)``: the divisor of a hypothesis' total log-probability."""
        if self.length_penalty == "mean":
            return length
        alpha = float(self.length_penalty)
        if alpha == 0.0:
            return length * 0 + 1.0
        return ((5.0 + length) / 6.0) ** alpha


@dataclass
class Hypothesis:
    """A decoded reply: ``tokens`` end with ``</s>`` when the reply ended by itself (not at
    ``max_length``), so ``token_log_probs`` has one entry per token. ``log_prob`` is their
    total, ``score`` what the hypotheses are ranked by (length-normalised, MMI-adjusted)."""

    tokens: list[int]
    log_prob: float
    token_log_probs: list[float]
    score: float
    lm_log_prob: float | None = field(default=None, compare=False)  # MMI only


# --- masks --------------------------------------------------------------------------------


def block_repeated_ngrams(log_probs: Tensor, history: Tensor, n: int) -> None:
    """In place: a token that would complete an n-gram already in its row's ``history``
    ([R, t] token ids) gets -inf. Vectorised over rows: the last ``n - 1`` tokens are compared
    with every earlier window of ``n - 1`` tokens, and the tokens that followed the matching
    windows are blocked."""
    t = history.size(1)
    if n <= 0 or t < n - 1 or t == 0:
        return
    if n == 1:
        log_probs.scatter_(1, history, _NEG_INF)
        return
    if t < n:
        return
    windows = history.unfold(1, n - 1, 1)  # [R, t - n + 2, n - 1]
    match = (windows[:, :-1] == windows[:, -1:]).all(-1)  # [R, t - n + 1]
    rows, cols = match.nonzero(as_tuple=True)
    if rows.numel():
        log_probs.index_put_(
            (rows, history[:, n - 1 :][rows, cols]), log_probs.new_tensor(_NEG_INF)
        )


class _Masker:
    """Applies every "may not be generated here" rule to a step's log-probabilities."""

    def __init__(
        self, config: DecodingConfig, banned: Sequence[int], eos_id: int, device: torch.device
    ) -> None:
        self.banned = torch.tensor(sorted(set(banned)), dtype=torch.long, device=device)
        self.banned_and_eos = torch.tensor(
            sorted({*banned, eos_id}), dtype=torch.long, device=device
        )
        self.eos_id = eos_id
        self.ngram = config.no_repeat_ngram
        self.force = config.force_length
        self.min_length = config.force_length or config.min_length
        self.max_length = config.force_length or config.max_length

    def eos_allowed(self, step: int) -> bool:
        return step >= self.min_length

    def __call__(self, log_probs: Tensor, history: Tensor, step: int) -> None:
        if not self.eos_allowed(step):
            log_probs.index_fill_(1, self.banned_and_eos, _NEG_INF)
        elif self.banned.numel():
            log_probs.index_fill_(1, self.banned, _NEG_INF)
        if self.ngram:
            block_repeated_ngrams(log_probs, history, self.ngram)


# --- beam search --------------------------------------------------------------------------


class _Pool:
    """Finished hypotheses, gathered a step at a time as tensors, turned into lists once."""

    def __init__(self, config: DecodingConfig) -> None:
        self.config = config
        self.parts: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]] = []

    def add(
        self, items: Tensor, tokens: Tensor, token_lps: Tensor, totals: Tensor, scores: Tensor
    ) -> None:
        self.parts.append((items, tokens, token_lps, totals, scores))

    def best(self, num_items: int, keep: int) -> list[list[Hypothesis]]:
        found: list[list[tuple[float, int, Hypothesis]]] = [[] for _ in range(num_items)]
        order = 0
        for items, tokens, token_lps, totals, scores in self.parts:
            for item, toks, lps, total, score in zip(
                items.tolist(),
                tokens.tolist(),
                token_lps.tolist(),
                totals.tolist(),
                scores.tolist(),
            ):
                found[item].append((score, order, Hypothesis(toks, total, lps, score)))
                order += 1
        out = []
        for entries in found:
            usable = [e for e in entries if e[0] > _NEG_INF] or entries
            usable.sort(key=lambda e: (-e[0], e[1]))
            out.append([h for _, _, h in usable[:keep]])
        return out


#: Tokens per block in :func:`best_continuations`.
CANDIDATE_BLOCK = 64


def best_continuations(values: Tensor, offsets: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` best continuations of each item: the totals ``offsets[row] + values[row,
    token]`` for its beams' rows (offsets [A, K], values [A*K, V], rows item-major), best
    first as [A, k] float32 totals, with the beam [A, k] and token [A, k] of each.

    Beam search passes each beam's score minus its row's logsumexp as the offset and the raw
    logits (bf16 or float32) as the values, so a total is score + log p and the full
    [A*K, V] log-probabilities are never written. Scanning all A*K*V totals with ``topk``
    cost as much as the output layer (a full pass that sorts pairs). Instead each beam's
    tokens are cut into blocks of ``CANDIDATE_BLOCK``, a block's best total is its offset
    plus its largest value, and only the ``k`` blocks with the best of those are searched:
    every one of the ``k`` best totals lies in one of them (a block holding one is at least
    as good as the k-th best total, and at most ``k`` blocks can be). The last block holds
    the tokens left over. Measured at the seed shape (2 cores): about 2x
    faster than row-wise ``topk`` at 320 rows. Tied totals may come out in another order
    than a plain ``topk`` gives them."""
    live, beams = offsets.shape
    vocab = values.size(1)
    block = CANDIDATE_BLOCK
    blocks = -(-vocab // block)
    device = values.device
    if blocks * beams <= 2 * k:  # too few blocks to skip any: scan everything
        totals = (offsets.reshape(-1, 1) + values.float()).view(live, beams * vocab)
        top, index = totals.topk(k, dim=1)
        return top, index // vocab, index % vocab
    block_best = (kernels.block_max(values, block) + offsets.reshape(-1, 1)).view(live, -1)
    picked = block_best.topk(k, dim=1, sorted=False).indices  # beam * blocks + block
    beam = picked // blocks  # [A, k]
    tokens = ((picked % blocks) * block).unsqueeze(2) + torch.arange(block, device=device)
    past_end = tokens >= vocab  # in the last, partial block
    tokens = tokens.clamp_(max=vocab - 1).view(live, k * block)
    beam_rows = torch.arange(live, device=device).unsqueeze(1) * beams + beam
    totals = values.take((beam_rows * vocab).repeat_interleave(block, dim=1) + tokens).float()
    totals = totals.view(live, k, block).add_(offsets.gather(1, beam).unsqueeze(2))
    totals = totals.masked_fill_(past_end, _NEG_INF).view(live, k * block)
    beams_of = beam.repeat_interleave(block, dim=1)
    top, index = totals.topk(k, dim=1)
    return top, beams_of.gather(1, index), tokens.gather(1, index)


def _float32_log_probs(
    decoder: DecoderSteps,
    logits: Tensor,
    log_norm: Tensor,
    rows: Tensor,
    tokens: Tensor,
    live: Tensor,
) -> Tensor:
    """Log-probabilities of the candidate ``tokens`` in ``rows`` ([A, n] each) from float32
    logits, for a step whose logits are bf16 (-inf where ``live`` is false).

    bf16 rounds a logit to 8 bits (steps of 1/16 between 8 and 16): near-tied candidates
    swap, and 17% of replies changed on a trained attention model. The candidates' logits
    are recomputed in float32 (``DecoderSteps.exact_logits``), and each row's logsumexp is
    corrected by what the change of its candidates' terms adds to its sum; the remaining
    tokens' rounding is left in. Measured, beam 5, 200 chit-chat contexts, bf16 vs float32:
    the same best reply for 182/200 (was 166) on an attention model and 181/200 (was 168)
    on the demo's."""
    exact = decoder.exact_logits(rows, tokens).masked_fill_(~live, _NEG_INF)
    rounded = logits.take(rows * logits.size(1) + tokens).float()
    # each term's share of its row's sum changes by p * (exp(exact - rounded) - 1)
    change = (rounded - log_norm.take(rows)).exp() * (exact - rounded).nan_to_num_(0.0).expm1()
    added = torch.zeros_like(log_norm).index_add_(0, rows.view(-1), change.view(-1))
    # the candidates' rounded terms are part of the sum, so `added` > -1 up to rounding
    return exact - (log_norm + torch.log1p(added.clamp(min=-1 + 1e-6))).take(rows)


def _beam_search(
    model: HRED,
    context: Tensor,
    memory: Memory | None,
    config: DecodingConfig,
    masker: _Masker,
    keep: int,
) -> list[list[Hypothesis]]:
    c = model.config
    device = context.device
    num_items, beams, vocab = context.size(0), config.beam_size, c.vocab_size
    max_length = masker.max_length
    decoder = model.start_decoding(context, memory)
    decoder.repeat(beams)
    hidden = decoder.initial_hidden()
    rows_total = num_items * beams
    previous = torch.full((rows_total,), c.bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(num_items, beams, device=device)
    scores[:, 1:] = _NEG_INF  # all beams start identical: only the first is live
    # tokens and their log-probs so far, one row per beam (columns 0..step-1 are filled)
    history = torch.zeros(rows_total, max_length, dtype=torch.long, device=device)
    history_lps = torch.zeros(rows_total, max_length, device=device)
    items = torch.arange(num_items, device=device)  # original index of each live item
    finished = torch.zeros(num_items, dtype=torch.long, device=device)
    top_finished = torch.full((num_items, keep), _NEG_INF, device=device)
    pool = _Pool(config)
    lp = config.length_normaliser
    any_finished = False

    base = torch.arange(num_items, device=device).unsqueeze(1) * beams  # [A, 1] first rows
    beam_index = torch.arange(beams, device=device)
    for step in range(max_length):
        # log p = logit - log_norm: only the log-probs read below are ever computed
        logits, hidden = decoder.logits(previous, hidden)
        log_norm = kernels.logsumexp(logits)
        masker(logits, history[:, :step], step)
        eos_allowed = masker.eos_allowed(step)
        # the best 2K continuations hold the best K that are not </s> (K when </s> is out)
        width = min(2 * beams if eos_allowed else beams, beams * vocab)
        offsets = scores - log_norm.view(-1, beams)
        top_scores, source, tokens = best_continuations(logits, offsets, width)
        parents = base + source  # [A, width]: the row each candidate continues
        if logits.dtype == torch.float32:
            token_lps = logits.take(parents * vocab + tokens) - log_norm.take(parents)
        else:  # bf16 logits are rounded: rank the candidates on float32 ones
            live = top_scores > _NEG_INF
            token_lps = _float32_log_probs(decoder, logits, log_norm, parents, tokens, live)
            top_scores = scores.gather(1, source) + token_lps
            order = top_scores.argsort(dim=1, descending=True, stable=True)
            top_scores, parents, tokens, token_lps = (
                t.gather(1, order) for t in (top_scores, parents, tokens, token_lps)
            )
        if eos_allowed:
            is_eos = tokens == c.eos_id
            ends = is_eos[:, :beams] & (top_scores[:, :beams] > _NEG_INF)
            if bool(ends.any()):
                any_finished = True
                length = step + 1
                normalised = top_scores[:, :beams] / lp(length)
                which, rank = ends.nonzero(as_tuple=True)
                ended_rows = parents[which, rank]
                ended = history[ended_rows, : step + 1]
                ended_lps = history_lps[ended_rows, : step + 1]
                ended[:, step] = c.eos_id
                ended_lps[:, step] = token_lps[which, rank]
                pool.add(
                    items[which], ended, ended_lps, top_scores[which, rank], normalised[which, rank]
                )
                finished += ends.sum(1)
                new = torch.where(ends, normalised, torch.full_like(normalised, _NEG_INF))
                top_finished = torch.cat([top_finished, new], dim=1).topk(keep, dim=1).values
            # the best `beams` candidates that are not </s>, in score order
            order = torch.sort(is_eos.to(torch.uint8), dim=1, stable=True).indices[:, :beams]
            scores, parents, tokens, token_lps = (
                t.gather(1, order) for t in (top_scores, parents, tokens, token_lps)
            )
        else:
            scores = top_scores
        parents, tokens, chosen = parents.view(-1), tokens.view(-1), token_lps.view(-1)
        history = history.index_select(0, parents)
        history_lps = history_lps.index_select(0, parents)
        history[:, step] = tokens
        history_lps[:, step] = chosen
        hidden = hidden.index_select(1, parents)
        previous = tokens

        if step + 1 == max_length:  # the live beams end here, without </s>
            pool.add(
                items.repeat_interleave(beams),
                history,
                history_lps,
                scores.view(-1),
                scores.view(-1) / lp(max_length),
            )
            break
        if not any_finished:  # (items whose beams all died run on to max_length)
            continue
        best_live = scores.max(dim=1).values
        # a live beam's final score is at most its total over the most favourable lp
        bound = torch.maximum(best_live / lp(step + 2), best_live / lp(max_length))
        done = (finished >= beams) | ((finished >= keep) & (bound <= top_finished[:, -1]))
        done |= best_live == _NEG_INF
        if bool(done.any()):
            dead = done & (finished == 0)  # nothing finished and nothing live: keep the rows
            if bool(dead.any()):
                dead_rows = (base[dead] + beam_index).view(-1)
                pool.add(
                    items[dead].repeat_interleave(beams),
                    history[dead_rows, : step + 1],
                    history_lps[dead_rows, : step + 1],
                    scores[dead].view(-1),
                    scores[dead].view(-1),
                )
            kept = (~done).nonzero().squeeze(1)
            if kept.numel() == 0:
                break
            kept_rows = (base[kept] + beam_index).view(-1)
            base = base[: kept.numel()]
            items, scores = items[kept], scores[kept]
            finished, top_finished = finished[kept], top_finished[kept]
            history, history_lps = history[kept_rows], history_lps[kept_rows]
            previous = previous[kept_rows]
            hidden = hidden.index_select(1, kept_rows)
            decoder.select(kept_rows)
    return pool.best(num_items, keep)


# --- greedy and sampling ------------------------------------------------------------------


def _greedy_or_sample(
    model: HRED,
    context: Tensor,
    memory: Memory | None,
    config: DecodingConfig,
    masker: _Masker,
    samples: int,
    seeds: list[int] | None = None,
) -> list[list[Hypothesis]]:
    """Greedy decoding (the argmax path) for ``method="greedy"``; otherwise ``samples``
    independent samples per context, from torch's global RNG, or, given each context's
    ``seeds`` (:func:`context_seed`), from one generator per row seeded with its context's
    seed plus the sample's number: a context then gets the same replies in any batch,
    whatever else is decoded beside it (the NLG server batches conversations)."""
    c = model.config
    device = context.device
    num_items = context.size(0)
    greedy = config.method == "greedy"
    decoder = model.start_decoding(context, memory)
    decoder.repeat(samples)
    hidden = decoder.initial_hidden()
    rows_total = num_items * samples
    items = torch.arange(num_items, device=device).repeat_interleave(samples)
    previous = torch.full((rows_total,), c.bos_id, dtype=torch.long, device=device)
    totals = torch.zeros(rows_total, device=device)
    history = torch.empty(rows_total, 0, dtype=torch.long, device=device)
    history_lps = torch.empty(rows_total, 0, device=device)
    generators: list[torch.Generator] | None = None
    if seeds is not None:
        generators = [
            torch.Generator(device=device).manual_seed(seeds[row // samples] + row % samples)
            for row in range(rows_total)
        ]
    pool = _Pool(config)
    lp = config.length_normaliser
    max_length = masker.max_length
    for step in range(max_length):
        log_probs, hidden = decoder.step(previous, hidden)
        eos_lp = log_probs[:, c.eos_id].clone()
        masker(log_probs, history, step)
        if greedy:
            tokens = log_probs.argmax(dim=1)
        else:
            tokens = sample_tokens(
                log_probs, config.temperature, config.top_k, config.top_p, generators
            )
        chosen = log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1)
        stuck = chosen == _NEG_INF  # nothing allowed at all (tiny vocabularies): stop here
        if bool(stuck.any()):
            tokens = torch.where(stuck, torch.full_like(tokens, c.eos_id), tokens)
            chosen = torch.where(stuck, eos_lp, chosen)
        totals = totals + chosen
        history = torch.cat([history, tokens.unsqueeze(1)], dim=1)
        history_lps = torch.cat([history_lps, chosen.unsqueeze(1)], dim=1)
        previous = tokens
        if step + 1 == max_length:
            pool.add(items, history, history_lps, totals, totals / lp(max_length))
            break
        ended = tokens == c.eos_id
        if bool(ended.any()):
            pool.add(
                items[ended],
                history[ended],
                history_lps[ended],
                totals[ended],
                totals[ended] / lp(step + 1),
            )
            kept = (~ended).nonzero().squeeze(1)
            if kept.numel() == 0:
                break
            items, totals = items[kept], totals[kept]
            history, history_lps, previous = history[kept], history_lps[kept], previous[kept]
            if generators is not None:
                generators = [generators[row] for row in kept.tolist()]
            hidden = hidden.index_select(1, kept)
            decoder.select(kept)
    return pool.best(num_items, samples)


def context_seed(seed: int, context: Sequence[Sequence[int]]) -> int:
    """The sampling seed of one context: ``seed`` and the context's token ids hashed together.
    The same conversation gets the same reply; different ones get different random draws
    (one seed for every context would draw the same numbers for all, and nearly the same
    reply to everything)."""
    key = repr((seed, [list(utterance) for utterance in context])).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=7).digest(), "little")


def warp_log_probs(
    log_probs: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering of [R, V] log-probabilities:
    the log-weights sampling draws from (-inf where a token cannot be drawn)."""
    warped = log_probs / temperature if temperature != 1.0 else log_probs.clone()
    vocab = warped.size(-1)
    if 0 < top_k < vocab:
        kth = warped.topk(top_k, dim=-1).values[..., -1:]
        warped = warped.masked_fill(warped < kth, _NEG_INF)
    if top_p < 1.0:
        warped = warped.masked_fill(~_nucleus(warped, top_p), _NEG_INF)
    return warped


#: Tokens :func:`_nucleus` looks at first; it looks at four times as many until the nucleus
#: of every row is among them (a full sort of the vocabulary took 0.6 ms a row at 8k).
NUCLEUS_FIRST_LOOK = 64


def _nucleus(log_weights: Tensor, top_p: float) -> Tensor:
    """[R, V] bool: each row's most likely tokens whose mass before them is below ``top_p``
    (the first is always kept; a row with nothing drawable keeps nothing)."""
    vocab = log_weights.size(-1)
    total = torch.logsumexp(log_weights, dim=-1, keepdim=True)
    look = min(NUCLEUS_FIRST_LOOK, vocab)
    while True:
        best, order = log_weights.topk(look, dim=-1)  # best first
        probs = (best - total).exp()
        before = probs.cumsum(dim=-1) - probs  # mass of the strictly better tokens
        if look == vocab or bool((before[..., -1] + probs[..., -1] >= top_p).all()):
            break
        look = min(vocab, 4 * look)
    return torch.zeros_like(log_weights, dtype=torch.bool).scatter_(-1, order, before < top_p)


#: Draws a row may make from the tempered distribution before :func:`sample_tokens` computes
#: its nucleus instead. A draw lands in the nucleus with probability >= top_p: at top_p 0.8,
#: all 8 miss one time in 2.6 million.
NUCLEUS_DRAWS = 8

Generators = torch.Generator | Sequence[torch.Generator] | None


def sample_tokens(
    log_probs: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: Generators = None,
) -> Tensor:
    """One token per row drawn from the warped distribution ([R, V] -> [R]), with one
    ``generator`` for all rows or one per row. A draw is one uniform number placed on the
    row's cumulative distribution (``multinomial`` drew one random number per token).

    With top-p (and no top-k) the nucleus is not computed: a token is drawn from the tempered
    distribution and drawn again while it falls outside the nucleus (the tokens more likely
    than it hold ``top_p`` of the mass or more), so the accepted draws follow the
    renormalised nucleus exactly. Finding the nucleus (``warp_log_probs``: a topk that grows
    with it) was most of a sampling step, and the demo's barely trained HRED spreads 80% of
    its mass over thousands of tokens. A row outside after ``NUCLEUS_DRAWS`` draws, and
    top-k, take the warped distribution. Tokens tied at the nucleus' edge are all in it."""
    if top_k > 0:
        warped = warp_log_probs(log_probs, temperature, top_k, top_p)
        return _inverse_cdf(_distribution(warped), generator)
    probs = _distribution(log_probs / temperature if temperature != 1.0 else log_probs)
    tokens = _inverse_cdf(probs, generator)
    if top_p >= 1.0:
        return tokens
    outside = ~_in_nucleus(probs, tokens, top_p)
    for _ in range(NUCLEUS_DRAWS):
        if not bool(outside.any()):
            return tokens
        rows = outside.nonzero().squeeze(1)
        row_probs = probs[rows]
        drawn = _inverse_cdf(row_probs, _rows_of(generator, rows))
        tokens[rows] = drawn
        outside[rows] = ~_in_nucleus(row_probs, drawn, top_p)
    if bool(outside.any()):
        rows = outside.nonzero().squeeze(1)
        warped = warp_log_probs(log_probs[rows], temperature, 0, top_p)
        tokens[rows] = _inverse_cdf(_distribution(warped), _rows_of(generator, rows))
    return tokens


def _distribution(log_weights: Tensor) -> Tensor:
    """[R, V] float probabilities; a row with nothing drawable puts all on token 0 (the
    caller replaces it by ``</s>``)."""
    probs = log_weights.float().softmax(dim=-1)
    dead = probs[:, 0].isnan()  # every weight -inf: softmax is nan throughout the row
    if bool(dead.any()):
        probs[dead] = 0.0
        probs[dead, 0] = 1.0
    return probs


def _in_nucleus(probs: Tensor, tokens: Tensor, top_p: float) -> Tensor:
    """Whether each row's token is in its nucleus: the more likely tokens hold < top_p."""
    return kernels.mass_above(probs, probs.gather(1, tokens.unsqueeze(1)).squeeze(1)) < top_p


def _rows_of(generator: Generators, rows: Tensor) -> Generators:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    return [generator[row] for row in rows.tolist()]


#: :func:`_inverse_cdf` finds a draw's block of this many tokens first, then the token in it.
CDF_BLOCK = 64


def _inverse_cdf(probs: Tensor, generator: Generators) -> Tensor:
    """One token per row of [R, V] probabilities, by one uniform number per row placed on
    the row's cumulative distribution: first among the sums of blocks of ``CDF_BLOCK``
    tokens, then within the block (a cumulative sum over the whole vocabulary runs one
    element at a time). The point is kept below each total it is compared with, so rounding
    can never select a token of probability zero."""
    rows, vocab = probs.shape
    if generator is None or isinstance(generator, torch.Generator):
        uniform = torch.rand(rows, generator=generator, device=probs.device)
    else:
        uniform = torch.cat([torch.rand(1, generator=g, device=g.device) for g in generator])
    whole = vocab // CDF_BLOCK * CDF_BLOCK
    sums = probs[:, :whole].view(rows, -1, CDF_BLOCK).sum(dim=2)
    if whole < vocab:  # the last block holds the tokens left over
        sums = torch.cat([sums, probs[:, whole:].sum(dim=1, keepdim=True)], dim=1)
    block_cumulative = sums.cumsum(dim=1)
    point = _below(uniform.unsqueeze(1) * block_cumulative[:, -1:], block_cumulative[:, -1:])
    block = torch.searchsorted(block_cumulative, point, right=True)  # [R, 1]
    before = torch.where(block > 0, block_cumulative.gather(1, (block - 1).clamp(min=0)), 0.0)
    columns = block * CDF_BLOCK + torch.arange(CDF_BLOCK, device=probs.device)  # [R, block]
    within = probs.gather(1, columns.clamp(max=vocab - 1)).masked_fill_(columns >= vocab, 0.0)
    within = within.cumsum(dim=1)
    point = _below((point - before).clamp_(min=0.0), within[:, -1:])
    return (block * CDF_BLOCK + torch.searchsorted(within, point, right=True)).squeeze(1)


def _below(point: Tensor, total: Tensor) -> Tensor:
    """``point``, or the largest float below ``total`` where it is not below it."""
    return torch.minimum(point, torch.nextafter(total, total.new_zeros(())))


# --- MMI-antiLM -----------------------------------------------------------------------------


def lm_log_probs(model: HRED, sequences: Sequence[Sequence[int]], max_tokens: int) -> Tensor:
    """log p_LM of the first ``max_tokens`` tokens of each sequence under the decoder with a
    zero context vector (HRED's state for an empty dialogue); one teacher-forced pass."""
    c = model.config
    device = model.embedding.weight.device
    if not sequences:
        return torch.zeros(0, device=device)
    cut = [list(s[:max_tokens]) for s in sequences]
    width = max(1, max(len(s) for s in cut))
    inputs = torch.full((len(cut), width), c.pad_id, dtype=torch.long)
    targets = torch.full((len(cut), width), c.pad_id, dtype=torch.long)
    for i, seq in enumerate(cut):
        if seq:
            inputs[i, : len(seq)] = torch.tensor([c.bos_id, *seq[:-1]])
            targets[i, : len(seq)] = torch.tensor(seq)
    lengths = torch.tensor([len(seq) for seq in cut])
    mask = torch.arange(width) < lengths.unsqueeze(1)
    context = model.embedding.weight.new_zeros(len(cut), c.context_hidden)
    return model.target_log_probs(
        inputs.to(device), targets.to(device), mask.to(device), context
    ).sum(dim=1)


def mmi_rerank(
    hypotheses: Sequence[Hypothesis], lm_scores: Sequence[float], mmi_lambda: float
) -> list[Hypothesis]:
    """``score - lambda * lm`` for each hypothesis, best first (ties keep their order)."""
    reranked = [
        replace(h, score=h.score - mmi_lambda * float(lm), lm_log_prob=float(lm))
        for h, lm in zip(hypotheses, lm_scores, strict=True)
    ]
    order = sorted(range(len(reranked)), key=lambda i: -reranked[i].score)
    return [reranked[i] for i in order]


# --- entry point ----------------------------------------------------------------------------


def decode(
    model: HRED,
    contexts: Sequence[Sequence[Sequence[int]]],
    config: DecodingConfig | None = None,
    *,
    vocabulary: Vocabulary | None = None,
) -> list[list[Hypothesis]]:
    """Decode every context (a list of ``<s> .. </s>`` id utterances; may be empty) and
    return its ``config.n_best`` best hypotheses, best first. All contexts run as one batch
    (chunked above ``MAX_ROWS`` rows). ``vocabulary`` resolves ``banned_tokens``."""
    config = config or DecodingConfig()
    if not contexts:
        return []
    c = model.config
    banned = config.banned_ids(vocabulary, c.bos_id, c.pad_id)
    device = model.embedding.weight.device
    masker = _Masker(config, banned, c.eos_id, device)
    keep = config.num_candidates
    width = config.beam_size if config.method == "beam" else keep
    max_rows = MAX_ROWS if device.type == "cuda" else min(MAX_ROWS, MAX_ROWS_CPU)
    chunk = max(1, max_rows // width)
    chunk = -(-len(contexts) // -(-len(contexts) // chunk))  # even chunks: 32 + 32, not 51 + 13
    results: list[list[Hypothesis]] = []
    with torch.inference_mode(), _eval_mode(model):
        for start in range(0, len(contexts), chunk):
            part = [[list(u) for u in ctx] for ctx in contexts[start : start + chunk]]
            vectors, memory = model.encode_contexts(part)
            if config.method == "beam":
                found = _beam_search(model, vectors, memory, config, masker, keep)
            else:
                seeds = None
                if config.method == "sample" and config.seed is not None:
                    seeds = [context_seed(config.seed, context) for context in part]
                found = _greedy_or_sample(model, vectors, memory, config, masker, keep, seeds)
            if config.mmi_lambda > 0:
                found = _apply_mmi(model, found, config)
            results.extend(hyps[: config.n_best] for hyps in found)
    return results


@contextlib.contextmanager
def _eval_mode(model: HRED) -> Iterator[None]:
    """Decoding never runs dropout (the seed generated through its training path)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _apply_mmi(
    model: HRED, found: list[list[Hypothesis]], config: DecodingConfig
) -> list[list[Hypothesis]]:
    flat = [h.tokens for hyps in found for h in hyps]
    lm = lm_log_probs(model, flat, config.mmi_tokens).tolist()
    out, at = [], 0
    for hyps in found:
        out.append(mmi_rerank(hyps, lm[at : at + len(hyps)], config.mmi_lambda))
        at += len(hyps)
    return out
