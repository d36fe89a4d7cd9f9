"""From text dialogues to padded, length-bucketed batches of token ids.

A dialogue is the unit of batching: its context always travels with its own targets (the
seed's loader sorted u1, u2 and u3 separately and paired contexts with foreign replies).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from rasa_hred.core.model import DialogueBatch
from rasa_hred.core.vocab import Vocabulary

DialogueIds = list[list[int]]  # utterances as <s> .. </s> id lists


def encode_dialogue(
    dialogue: Sequence[str], vocabulary: Vocabulary, max_utterance_tokens: int
) -> DialogueIds:
    """Space-separated token utterances -> ``<s> w.. </s>`` id lists, each truncated."""
    return [
        [
            vocabulary.bos_id,
            *vocabulary.encode(utt.split()[:max_utterance_tokens]),
            vocabulary.eos_id,
        ]
        for utt in dialogue
    ]


def windows(dialogue: DialogueIds, max_turns: int, *, align_end: bool = False) -> list[DialogueIds]:
    """Cut a long dialogue into windows of at most ``max_turns`` turns.

    Windows overlap by one turn, so every turn after the first is a target exactly once and
    always has at least one turn of context. ``align_end`` cuts from the end, so that every
    window but the first is full and its last utterance has the longest context a window
    gives (what evaluating the last utterances with more or less history needs).
    """
    if len(dialogue) <= max_turns:
        return [dialogue]
    step = max_turns - 1
    if align_end:
        ends = range(len(dialogue), 1, -step)
        return [dialogue[max(0, end - max_turns) : end] for end in reversed(ends)]
    return [
        dialogue[start : start + max_turns]
        for start in range(0, len(dialogue) - 1, step)
        if len(dialogue[start : start + max_turns]) >= 2
    ]


def encode_dialogues(
    dialogues: Sequence[Sequence[str]],
    vocabulary: Vocabulary,
    *,
    max_utterance_tokens: int = 50,
    max_turns: int = 10,
    align_end: bool = False,
) -> list[DialogueIds]:
    encoded: list[DialogueIds] = []
    for dialogue in dialogues:
        ids = encode_dialogue(dialogue, vocabulary, max_utterance_tokens)
        encoded.extend(windows(ids, max_turns, align_end=align_end))
    return encoded


def bucketed_batches(
    dialogues: Sequence[DialogueIds],
    batch_size: int,
    *,
    rng: random.Random | None = None,
    pool: int = 50,
) -> list[list[int]]:
    """Indices of dialogues grouped into batches of similar shape.

    Dialogues are sorted by (turns, longest utterance) inside pools of ``pool`` batches, so
    padding stays small while batch order (and, with ``rng``, pool membership) is random.
    Without ``rng`` the order is deterministic (evaluation).
    """
    order = list(range(len(dialogues)))
    if rng is not None:
        rng.shuffle(order)
    chunk = batch_size * pool
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: _shape(dialogues[i]))
        batches.extend(part[k : k + batch_size] for k in range(0, len(part), batch_size))
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _shape(dialogue: DialogueIds) -> tuple[int, int, int]:
    return len(dialogue), max(len(u) for u in dialogue), len(dialogue[-1])


def make_batch(
    dialogues: Sequence[DialogueIds], indices: Sequence[int], pad_id: int
) -> DialogueBatch:
    return DialogueBatch.from_ids([dialogues[i] for i in indices], pad_id)


def iterate_batches(
    dialogues: Sequence[DialogueIds], batch_size: int, pad_id: int
) -> Iterator[DialogueBatch]:
    """Deterministic batches for evaluation."""
    for indices in bucketed_batches(dialogues, batch_size):
        yield make_batch(dialogues, indices, pad_id)


def padding_fraction(batches: Sequence[DialogueBatch]) -> float:
    """Share of padded cells in the utterance tensors (what a padded model would waste)."""
    cells = sum(b.utterances.numel() for b in batches)
    real = sum(b.num_tokens() for b in batches)
    return 1.0 - real / cells if cells else 0.0
