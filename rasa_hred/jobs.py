"""Jobs that join the corpus and core layers; used by the CLI and the policy.

``core`` trains and scores the dialogues it is handed and ``corpora`` reads dialogues from
files; a job does both, so neither layer needs to know the other. (Measuring the diversity of
generated replies also needs the serving layer's generator.)
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rasa_hred.core.batching import encode_dialogues
from rasa_hred.core.checkpoint import load_model, resolve_device
from rasa_hred.core.evaluation import context_turns, diversity, evaluate, progress_bar
from rasa_hred.core.training import TrainingConfig, TrainingResult, train_model
from rasa_hred.corpora import load_corpus
from rasa_hred.corpora.specs import SourceLoader
from rasa_hred.serving.generator import ResponseGenerator

GENERATION_BATCH = 64  # contexts per generate() call when measuring diversity


def train_on_corpus(
    config: TrainingConfig,
    *,
    extra_dialogues: Sequence[Sequence[str]] = (),
    resume: bool = False,
    sources: Mapping[str, SourceLoader] | None = None,
) -> TrainingResult:
    """Load ``config.corpus`` (split with ``config.split_seed``), add ``extra_dialogues`` to
    its training split, train, and leave a model directory in ``config.out``. A MovieTriples
    corpus brings its own vocabulary; otherwise one is built from the training split."""
    corpus = load_corpus(config.corpus, seed=config.split_seed, sources=sources)
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
    max_turns: int | None = None,
    decoding: Mapping[str, Any] | None = None,
    progress: bool = False,
    sources: Mapping[str, SourceLoader] | None = None,
) -> dict[str, Any]:
    """The figures of ``rasa-hred eval``: perplexities, error rate, the shuffled-context
    control and the history ablation of a model directory on one split of ``specs`` (``all``:
    every dialogue); with ``replies`` > 0 also the diversity of replies generated for up to
    that many of the split's contexts, under the model's decoding with ``decoding`` on top.

    ``seed`` is the train/validation/test split seed; by default the one used in training.
    Dialogues are cut as in training (its ``max_utterance_tokens`` and ``max_turns``), so the
    history ablation goes up to the previous turns a training window holds; ``max_turns``
    (at most that) is the context of ``perplexity_last`` and of the generated replies."""
    loaded = load_model(model_dir, resolve_device(device))
    training = loaded.extra.get("training", {})
    split_seed = seed if seed is not None else training.get("split_seed", 0)
    dialogues = load_corpus(specs, seed=split_seed, sources=sources).split(split)
    window = training.get("max_turns", TrainingConfig.max_turns)
    encoded = encode_dialogues(
        dialogues,
        loaded.vocabulary,
        max_utterance_tokens=training.get(
            "max_utterance_tokens", TrainingConfig.max_utterance_tokens
        ),
        max_turns=window,
        align_end=True,  # the last utterance of every window but the first has a full context
    )
    result: dict[str, Any] = {
        "model": str(model_dir),
        "split": split,
        "corpus_dialogues": len(dialogues),
    }
    result |= evaluate(
        loaded.model,
        encoded,
        batch_size,
        split_seed,
        max_turns=max_turns,
        trained_turns=context_turns(window),
        progress=progress,
    )
    if replies:
        result |= generated_diversity(
            model_dir,
            dialogues,
            replies,
            device=device,
            max_turns=max_turns,
            decoding=decoding,
            progress=progress,
        )
    return result


def generated_diversity(
    model_dir: str | Path,
    dialogues: Sequence[Sequence[str]],
    count: int,
    *,
    device: str = "auto",
    max_turns: int | None = None,
    decoding: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Generate replies for ``count`` contexts (see :func:`reply_contexts`; at most
    ``max_turns`` turns of each: by default as in training) and measure the replies'
    diversity. The decoding is what serving uses: the model directory's (``config.json``
    "decoding", else the defaults) with ``decoding`` on top; it is reported as
    ``decoding``."""
    generator = ResponseGenerator.load(model_dir, device=device, max_turns=max_turns)
    contexts = reply_contexts(dialogues, count)
    tokens: list[list[str]] = []
    bar = progress_bar(len(contexts), "replies", "reply", progress)
    try:
        if decoding:
            generator.decoding = generator.decoding.replace(**decoding)
        for start in range(0, len(contexts), GENERATION_BATCH):
            batch = contexts[start : start + GENERATION_BATCH]
            tokens.extend(reply.tokens for reply in generator.generate(batch))
            bar.update(len(batch))
    finally:
        bar.close()
        generator.close()
    return {**diversity(tokens), "decoding": generator.decoding.to_dict()}


def reply_contexts(dialogues: Sequence[Sequence[str]], count: int) -> list[list[str]]:
    """Up to ``count`` contexts to reply to: each dialogue's utterances before one of its turns
    after the first, a seeded sample of all of them. A split of long conversations has many
    more contexts than dialogues (the chitchat test split: 173 dialogues, 6.8k turns)."""
    contexts = [list(d[:turn]) for d in dialogues for turn in range(1, len(d))]
    if len(contexts) <= count:
        return contexts
    return random.Random(0).sample(contexts, count)
