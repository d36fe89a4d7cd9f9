"""Corpus statistics: what ``rasa-hred corpus stats`` prints, per split."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from rasa_hred.core.vocab import SPECIAL_TOKENS, Vocabulary
from rasa_hred.corpora.base import SPLIT_NAMES, Corpus, CorpusError, Dialogue


def corpus_stats(corpus: Corpus, vocab_size: int = 10000) -> dict[str, Any]:
    """Per split: dialogues, utterances, tokens, the fraction of tokens covered by the
    ``vocab_size`` most frequent training words (plus the special tokens), utterance length
    percentiles (p50/p90/p99, nearest rank, in tokens) and mean turns per dialogue. When the
    corpus brings a vocabulary (MovieTriples), its coverage is reported as well."""
    if vocab_size < 0:
        raise CorpusError(f"vocab_size must be >= 0, got {vocab_size}")
    full = Vocabulary.build(_utterance_tokens(corpus.train), max_size=None)
    word_types = len(full) - len(SPECIAL_TOKENS)
    vocabulary = set(full.tokens[: len(SPECIAL_TOKENS) + vocab_size])
    splits: dict[str, dict[str, Any]] = {}
    for name in SPLIT_NAMES:
        dialogues = corpus.split(name)
        lengths: list[int] = []
        covered = 0
        own_covered = 0
        for tokens in _utterance_tokens(dialogues):
            lengths.append(len(tokens))
            covered += sum(1 for token in tokens if token in vocabulary)
            if corpus.vocabulary is not None:
                own_covered += sum(1 for token in tokens if token in corpus.vocabulary)
        lengths.sort()
        total = sum(lengths)
        entry: dict[str, Any] = {
            "dialogues": len(dialogues),
            "utterances": len(lengths),
            "tokens": total,
            "coverage": covered / total if total else 0.0,
            "utterance_length": {
                "p50": _nearest_rank(lengths, 50),
                "p90": _nearest_rank(lengths, 90),
                "p99": _nearest_rank(lengths, 99),
                "max": lengths[-1] if lengths else 0,
            },
            "mean_turns": len(lengths) / len(dialogues) if dialogues else 0.0,
        }
        if corpus.vocabulary is not None:
            entry["corpus_vocabulary_coverage"] = own_covered / total if total else 0.0
        splits[name] = entry
    stats: dict[str, Any] = {
        "sources": list(corpus.sources),
        "vocab_size": vocab_size,
        "vocabulary_words": min(vocab_size, word_types),
        "train_word_types": word_types,
        "splits": splits,
        "skipped": dict(corpus.skipped),
        "skipped_total": corpus.num_skipped,
    }
    if corpus.vocabulary is not None:
        stats["corpus_vocabulary_size"] = len(corpus.vocabulary)
    return stats


def format_stats(stats: dict[str, Any]) -> str:
    """The human-readable table printed by ``rasa-hred corpus stats``."""
    lines = ["sources:"]
    lines += [f"  {source}" for source in stats["sources"]]
    lines.append(
        f"vocabulary: {stats['vocabulary_words']} most frequent of "
        f"{stats['train_word_types']} training words (--vocab-size {stats['vocab_size']}) "
        "+ special tokens"
    )
    header = (
        f"{'split':<11}{'dialogues':>10}{'utterances':>11}{'tokens':>10}{'coverage':>10}"
        f"{'len p50':>9}{'p90':>5}{'p99':>5}{'turns':>7}"
    )
    lines += ["", header]
    for name, entry in stats["splits"].items():
        length = entry["utterance_length"]
        lines.append(
            f"{name:<11}{entry['dialogues']:>10}{entry['utterances']:>11}{entry['tokens']:>10}"
            f"{entry['coverage']:>10.2%}{length['p50']:>9}{length['p90']:>5}{length['p99']:>5}"
            f"{entry['mean_turns']:>7.2f}"
        )
    if "corpus_vocabulary_size" in stats:
        coverage = ", ".join(
            f"{name} {entry['corpus_vocabulary_coverage']:.2%}"
            for name, entry in stats["splits"].items()
        )
        lines.append(
            f"corpus dictionary ({stats['corpus_vocabulary_size']} tokens) coverage: {coverage}"
        )
    lines.append("")
    lines.append(f"skipped: {stats['skipped_total']}")
    lines += [f"  {count:>6}  {reason}" for reason, count in stats["skipped"].items()]
    return "\n".join(lines)


def _nearest_rank(sorted_values: Sequence[int], percent: float) -> int:
    """Nearest-rank percentile of already sorted values (0 when empty)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _utterance_tokens(dialogues: Iterable[Dialogue]) -> Iterator[list[str]]:
    for dialogue in dialogues:
        for utterance in dialogue:
            yield utterance.split()
