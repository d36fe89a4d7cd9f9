"""Perplexity, the paper's error rate, and the shuffled-context control.

``perplexity_last_shuffled_context`` scores each dialogue's last utterance after a *foreign*
context: a model that uses its context does clearly worse there than with its own.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
from collections.abc import Sequence
from typing import Any

import torch

from rasa_hred.core.batching import DialogueIds, encode_dialogues, iterate_batches
from rasa_hred.core.checkpoint import load_model, resolve_device
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


def generated_diversity(model_dir: str, dialogues: Sequence[Sequence[str]], count: int) -> dict:
    """Generate a reply for the context of up to ``count`` dialogues and measure diversity."""
    from rasa_hred.serving.generator import ResponseGenerator

    generator = ResponseGenerator.load(model_dir, device="auto")
    contexts = [list(d[:-1]) for d in dialogues[:count]]
    replies = []
    for start in range(0, len(contexts), 64):
        replies.extend(r.tokens for r in generator.generate(contexts[start : start + 64]))
    return diversity(replies)


def eval_command(args: argparse.Namespace) -> int:
    from rasa_hred.corpora.loaders import load_corpus

    loaded = load_model(args.model, resolve_device(args.device))
    training = loaded.extra.get("training", {})
    seed = args.seed if args.seed is not None else training.get("split_seed", 0)
    corpus = load_corpus(args.corpus, seed=seed)
    dialogues = encode_dialogues(
        corpus.split(args.split),
        loaded.vocabulary,
        max_utterance_tokens=training.get("max_utterance_tokens", 50),
        max_turns=training.get("max_turns", 10),
    )
    result = {"model": str(args.model), "split": args.split}
    result |= evaluate(loaded.model, dialogues, args.batch_size, seed)
    if args.replies:
        result |= generated_diversity(args.model, corpus.split(args.split), args.replies)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>34}: {value:.4f}" if isinstance(value, float) else f"{key:>34}: {value}")
    return 0
