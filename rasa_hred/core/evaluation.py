"""Perplexity, the paper's error rate, and the shuffled-context control.

``perplexity_last_shuffled_context`` scores each dialogue's last utterance after a *foreign*
context: a model that uses its context does clearly worse there than with its own.

These take encoded dialogues; ``rasa_hred.jobs.evaluate_on_corpus`` runs them on a corpus.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from typing import Any

import torch

from rasa_hred.core.batching import DialogueIds, iterate_batches
from rasa_hred.core.model import HRED, LossOn
from rasa_hred.errors import UserError


@torch.inference_mode()
def score(
    model: HRED, dialogues: Sequence[DialogueIds], loss_on: LossOn, batch_size: int = 64
) -> dict[str, float]:
    """Summed NLL, modelled tokens and argmax hits over ``dialogues`` under teacher forcing."""
    was_training = model.training
    model.eval()
    device = model.embedding.weight.device
    totals = {"loss_sum": 0.0, "tokens": 0, "correct": 0}
    for batch in iterate_batches(dialogues, batch_size, model.config.pad_id):
        out = model(batch.to(device), loss_on=loss_on)
        totals["loss_sum"] += float(out["loss_sum"])
        totals["tokens"] += int(out["tokens"])
        totals["correct"] += int(out["correct"])
    model.train(was_training)
    return totals


def perplexity(totals: dict[str, float]) -> float:
    return math.exp(totals["loss_sum"] / max(1, totals["tokens"]))


def shuffle_contexts(dialogues: Sequence[DialogueIds], seed: int = 0) -> list[DialogueIds]:
    """Give every dialogue's last utterance the context of another dialogue (a derangement)."""
    if len(dialogues) < 2:
        raise UserError("the shuffled-context control needs at least two dialogues")
    order = list(range(len(dialogues)))
    random.Random(seed).shuffle(order)
    donor = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
    return [[*dialogues[donor[i]][:-1], d[-1]] for i, d in enumerate(dialogues)]


def evaluate(
    model: HRED, dialogues: Sequence[DialogueIds], batch_size: int = 64, seed: int = 0
) -> dict[str, Any]:
    """The figures of ``rasa-hred eval``."""
    if not dialogues:
        raise UserError("nothing to evaluate: the split has no dialogues")
    full = score(model, dialogues, "all", batch_size)
    last = score(model, dialogues, "last", batch_size)
    # The control needs a second dialogue to borrow a context from.
    shuffled = (
        score(model, shuffle_contexts(dialogues, seed), "last", batch_size)
        if len(dialogues) > 1
        else None
    )
    return {
        "perplexity": perplexity(full),
        "perplexity_last": perplexity(last),
        "perplexity_last_shuffled_context": perplexity(shuffled) if shuffled else None,
        "error_rate": 1.0 - full["correct"] / max(1, full["tokens"]),
        "tokens": int(full["tokens"]),
        "tokens_last": int(last["tokens"]),
        "dialogues": len(dialogues),
    }


def diversity(replies: Sequence[Sequence[str]]) -> dict[str, float]:
    """distinct-1/2 (Li et al. 2016: distinct n-grams / all n-grams) and the unique-reply share."""
    unigrams = [token for reply in replies for token in reply]
    bigrams = [pair for reply in replies for pair in itertools.pairwise(reply)]
    texts = [" ".join(reply) for reply in replies]
    return {
        "replies": len(replies),
        "distinct_1": len(set(unigrams)) / max(1, len(unigrams)),
        "distinct_2": len(set(bigrams)) / max(1, len(bigrams)),
        "unique_reply_share": len(set(texts)) / max(1, len(texts)),
        "mean_reply_tokens": len(unigrams) / max(1, len(replies)),
    }
