"""Perplexity, the paper's error rate, the shuffled-context control and the history ablation.

``perplexity_last_shuffled_context`` scores each dialogue's last utterance after a *foreign*
context: a model that uses its context does clearly worse there than with its own. The
history ablation scores the same last utterances with at most K previous turns: a model that
uses its history does better as K grows.

These take encoded dialogues; ``rasa_hred.jobs.evaluate_on_corpus`` runs them on a corpus.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from rasa_hred.core.batching import DialogueIds, iterate_batches
from rasa_hred.core.model import HRED, LossOn
from rasa_hred.core.vocab import UNK
from rasa_hred.errors import UserError

HISTORY_TURNS = (1, 2, 4)  # the ablation's Ks, besides the model's trained maximum

Totals = dict[str, float]


class Progress(Protocol):
    def update(self, n: int) -> object: ...

    def close(self) -> None: ...


def progress_bar(total: int, description: str, unit: str, enabled: bool) -> Progress:
    """A tqdm bar on stderr, as training's (``enabled=False``: one that shows nothing)."""
    from tqdm import tqdm

    bar: Progress = tqdm(
        total=total,
        desc=description,
        unit=unit,
        leave=False,
        dynamic_ncols=True,
        disable=not enabled,
    )
    return bar


@torch.inference_mode()
def score(
    model: HRED,
    dialogues: Sequence[DialogueIds],
    loss_on: LossOn,
    batch_size: int = 64,
    tick: Callable[[int], object] | None = None,
) -> Totals:
    """Summed NLL, modelled tokens and argmax hits over ``dialogues`` under teacher forcing;
    ``tick`` is told how many dialogues each batch held."""
    was_training = model.training
    model.eval()
    device = model.embedding.weight.device
    totals = {"loss_sum": 0.0, "tokens": 0, "correct": 0}
    for batch in iterate_batches(dialogues, batch_size, model.config.pad_id):
        out = model(batch.to(device), loss_on=loss_on)
        totals["loss_sum"] += float(out["loss_sum"])
        totals["tokens"] += int(out["tokens"])
        totals["correct"] += int(out["correct"])
        if tick is not None:
            tick(len(batch.turns))
    model.train(was_training)
    return totals


def perplexity(totals: Totals) -> float:
    return math.exp(totals["loss_sum"] / max(1, totals["tokens"]))


def context_turns(window: int) -> int:
    """The previous turns a training window of ``window`` utterances (training's
    ``max_turns``) gives its last utterance: the window holds that utterance too."""
    return max(1, window - 1)


def check_max_turns(max_turns: int) -> int:
    """``max_turns`` when it is a whole number >= 1 (the scored utterance needs a context)."""
    if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
        raise UserError(
            "max_turns (previous turns kept before the scored utterance) must be a whole "
            f"number >= 1, not {max_turns!r}"
        )
    return max_turns


def cut_context(dialogue: DialogueIds, max_turns: int) -> DialogueIds:
    """``dialogue`` with its last utterance and at most ``max_turns`` turns before it (the
    oldest go); ``max_turns=1`` keeps only the utterance it answers."""
    check_max_turns(max_turns)
    return dialogue[-(max_turns + 1) :]


def shuffle_contexts(dialogues: Sequence[DialogueIds], seed: int = 0) -> list[DialogueIds]:
    """Give every dialogue's last utterance the context of another dialogue (a derangement)."""
    if len(dialogues) < 2:
        raise UserError("the shuffled-context control needs at least two dialogues")
    order = list(range(len(dialogues)))
    random.Random(seed).shuffle(order)
    donor = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
    return [[*dialogues[donor[i]][:-1], d[-1]] for i, d in enumerate(dialogues)]


def evaluate(
    model: HRED,
    dialogues: Sequence[DialogueIds],
    batch_size: int = 64,
    seed: int = 0,
    *,
    max_turns: int | None = None,
    trained_turns: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The figures of ``rasa-hred eval``.

    ``perplexity`` and ``error_rate`` cover every utterance after the first of each dialogue
    as it is; ``perplexity_last`` and its shuffled-context control the last utterance with
    at most ``max_turns`` previous turns. ``trained_turns`` is the most previous turns the
    model's training windows gave (``context_turns``; by default the longest context here):
    the history ablation's largest K and ``max_turns``' default and limit."""
    if not dialogues:
        raise UserError("nothing to evaluate: the split has no dialogues")
    longest = max(len(d) for d in dialogues) - 1
    trained = check_max_turns(trained_turns if trained_turns is not None else longest)
    k = check_max_turns(max_turns if max_turns is not None else trained)
    if k > trained:
        raise UserError(
            f"max_turns {k}: the model was trained with at most {trained} previous turns "
            "(its training windows), so no context here is longer"
        )
    ks = sorted({*(t for t in HISTORY_TURNS if t <= trained), trained, k})
    # The control needs a second dialogue to borrow a context from.
    controls = sorted({k, trained}) if len(dialogues) > 1 else []
    wanted = [(t, False) for t in ks] + [(t, True) for t in controls]
    bar = progress_bar((1 + len(wanted)) * len(dialogues), "eval", "dialogue", progress)
    try:
        full = score(model, dialogues, "all", batch_size, bar.update)
        last: dict[tuple[int, bool], Totals] = {}
        for turns, shuffled in wanted:
            cut = [cut_context(d, turns) for d in dialogues]
            scored = shuffle_contexts(cut, seed) if shuffled else cut
            last[turns, shuffled] = score(model, scored, "last", batch_size, bar.update)
    finally:
        bar.close()
    cut_counts = {t: sum(len(d) - 1 > t for d in dialogues) for t in ks}
    return {
        "perplexity": perplexity(full),
        "perplexity_last": perplexity(last[k, False]),
        "perplexity_last_shuffled_context": (
            perplexity(last[k, True]) if (k, True) in last else None
        ),
        "error_rate": 1.0 - full["correct"] / max(1, full["tokens"]),
        "tokens": int(full["tokens"]),
        "tokens_last": int(last[k, False]["tokens"]),
        "dialogues": len(dialogues),
        "max_turns": k,
        "history": history_figures(
            {t: last[t, False] for t in ks},
            last.get((trained, True)),
            cut_counts,
            trained,
            len(dialogues),
        ),
    }


def history_figures(
    by_turns: Mapping[int, Totals],
    shuffled: Totals | None,
    cut_counts: Mapping[int, int],
    trained_turns: int,
    last_utterances: int,
) -> dict[str, Any]:
    """The history ablation: ``perplexity_last`` per K previous turns with its ratio to K=1,
    and the shuffled-context control at the trained maximum (``context_gain``: its ratio to
    the true context).

    Every K scores the same last utterances, every dialogue's, also those whose context is
    shorter than K: only the context changes, so ``tokens_last`` is the same for all and the
    ratios compare like with like. Keeping only dialogues with longer contexts would drop
    most of a corpus of short exchanges and make the trained-maximum row differ from the
    plain ``perplexity_last``. ``contexts_cut`` says how many of them lost turns at that K:
    a ratio near 1 with few cut contexts says little about the model."""
    base = perplexity(by_turns[1])
    rows = [
        {
            "max_turns": turns,
            "perplexity_last": perplexity(totals),
            "ratio_to_1": perplexity(totals) / base,
            "tokens_last": int(totals["tokens"]),
            "contexts_cut": cut_counts[turns],
        }
        for turns, totals in sorted(by_turns.items())
    ]
    true = perplexity(by_turns[trained_turns])
    control = (
        None
        if shuffled is None
        else {
            "max_turns": trained_turns,
            "perplexity_last": perplexity(shuffled),
            "tokens_last": int(shuffled["tokens"]),
        }
    )
    return {
        "trained_max_turns": trained_turns,
        "last_utterances": last_utterances,
        "by_max_turns": rows,
        "shuffled_context": control,
        "context_gain": None if control is None else control["perplexity_last"] / true,
    }


def repeated_ngrams(tokens: Sequence[str], n: int = 3) -> int:
    """n-grams of ``tokens`` that repeat an earlier one of the same sequence (what decoding's
    ``no_repeat_ngram`` forbids)."""
    grams = list(zip(*(tokens[i:] for i in range(n)), strict=False))
    return len(grams) - len(set(grams))


def diversity(replies: Sequence[Sequence[str]]) -> dict[str, float]:
    """distinct-1/2 (Li et al. 2016: distinct n-grams / all n-grams), the unique-reply share,
    and the counts of what a reply should never hold: trigrams repeated within it, ``<unk>``."""
    unigrams = [token for reply in replies for token in reply]
    bigrams = [pair for reply in replies for pair in itertools.pairwise(reply)]
    texts = [" ".join(reply) for reply in replies]
    return {
        "replies": len(replies),
        "distinct_1": len(set(unigrams)) / max(1, len(unigrams)),
        "distinct_2": len(set(bigrams)) / max(1, len(bigrams)),
        "unique_reply_share": len(set(texts)) / max(1, len(texts)),
        "mean_reply_tokens": len(unigrams) / max(1, len(replies)),
        "repeated_trigrams": sum(repeated_ngrams(reply) for reply in replies),
        "unk_tokens": unigrams.count(UNK),
    }
