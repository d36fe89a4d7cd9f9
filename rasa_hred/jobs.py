"""Jobs that join the corpus and core layers; used by the CLI and the policy.

``core`` trains and scores the dialogues it is handed and ``corpora`` reads dialogues from
files; a job does both, so neither layer needs to know the other. (Measuring the diversity of
generated replies also needs the serving layer's generator.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rasa_hred.core.batching import encode_dialogues
from rasa_hred.core.checkpoint import load_model, resolve_device
from rasa_hred.core.evaluation import diversity, evaluate
from rasa_hred.core.training import TrainingConfig, TrainingResult, train_model
from rasa_hred.corpora import load_corpus
from rasa_hred.serving.generator import ResponseGenerator

GENERATION_BATCH = 64  # contexts per generate() call when measuring diversity


def train_on_corpus(
    config: TrainingConfig,
    *,
    extra_dialogues: Sequence[Sequence[str]] = (),
    resume: bool = False,
) -> TrainingResult:
    """Load ``config.corpus`` (split with ``config.split_seed``), add ``extra_dialogues`` to
    its training split, train, and leave a model directory in ``config.out``. A MovieTriples
    corpus brings its own vocabulary; otherwise one is built from the training split."""
    corpus = load_corpus(config.corpus, seed=config.split_seed)
    extra = {"corpus": {"specs": list(config.corpus), "skipped": corpus.skipped}}
    return train_model(
        config,
        [*corpus.train, *extra_dialogues],
        corpus.validation,
        corpus.vocabulary,
        resume=resume,
        extra=extra,
    )


def evaluate_on_corpus(
    model_dir: str | Path,
    specs: Sequence[str],
    *,
    split: str = "test",
    seed: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
    replies: int = 0,
) -> dict[str, Any]:
    """The figures of ``rasa-hred eval``: perplexities, error rate and the shuffled-context
    control of a model directory on one split of ``specs``; with ``replies`` > 0 also the
    diversity of replies generated for up to that many of the split's contexts.

    ``seed`` is the train/validation/test split seed; by default the one used in training.
    Dialogues are cut as in training (its ``max_utterance_tokens`` and ``max_turns``)."""
    loaded = load_model(model_dir, resolve_device(device))
    training = loaded.extra.get("training", {})
    split_seed = seed if seed is not None else training.get("split_seed", 0)
    dialogues = load_corpus(specs, seed=split_seed).split(split)
    encoded = encode_dialogues(
        dialogues,
        loaded.vocabulary,
        max_utterance_tokens=training.get("max_utterance_tokens", 50),
        max_turns=training.get("max_turns", 10),
    )
    result: dict[str, Any] = {"model": str(model_dir), "split": split}
    result |= evaluate(loaded.model, encoded, batch_size, split_seed)
    if replies:
        result |= generated_diversity(model_dir, dialogues, replies, device=device)
    return result


def generated_diversity(
    model_dir: str | Path,
    dialogues: Sequence[Sequence[str]],
    count: int,
    *,
    device: str = "auto",
) -> dict[str, float]:
    """Generate a reply for the context of up to ``count`` dialogues (each without its last
    utterance) and measure the replies' diversity."""
    generator = ResponseGenerator.load(model_dir, device=device)
    contexts = [list(d[:-1]) for d in dialogues[:count]]
    tokens: list[list[str]] = []
    try:
        for start in range(0, len(contexts), GENERATION_BATCH):
            batch = contexts[start : start + GENERATION_BATCH]
            tokens.extend(reply.tokens for reply in generator.generate(batch))
    finally:
        generator.close()
    return diversity(tokens)
