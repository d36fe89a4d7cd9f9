"""``rasa-hred bench train``: training throughput on synthetic MovieTriples-shaped data.

The anchor (the seed's HRED, hsgodhia/hred) trained at the seed's configuration (embeddings
and hidden 300, vocabulary 10,004, batch 50, teacher forcing, loss on the last utterance
only) on triples averaging ~53 tokens. This benchmark builds data of that shape, times full
optimisation steps (forward, backward, clipping, Adam) after one untimed pass over its
batches (a bf16 product's first run of each shape compiles a oneDNN kernel), and on a CPU at
batch 50 times the anchor's work in the same run (``rasa_hred/bench/anchor.py``). Every
setting is timed in slices taken in turns, so that the speedups are ratios of one run.
"""

from __future__ import annotations

import random
import time
from typing import Any

import torch

from rasa_hred.bench.anchor import AnchorRun
from rasa_hred.bench.common import load_average, synchronize
from rasa_hred.core.batching import DialogueIds, bucketed_batches, make_batch, padding_fraction
from rasa_hred.core.checkpoint import resolve_device
from rasa_hred.core.model import HRED, DialogueBatch, HREDConfig, LossOn
from rasa_hred.core.training import adam, autocast

SEED_VOCAB = 10_004


def synthetic_triples(count: int, vocab_size: int = SEED_VOCAB, seed: int = 0) -> list[DialogueIds]:
    """Triples of ``<s> w.. </s>`` utterances, 1-31 words each (~54 tokens a triple), words
    drawn from a Zipf-like distribution over ids 7.. (0-6 are the special tokens)."""
    rng = random.Random(seed)
    weights = [1.0 / rank for rank in range(1, vocab_size - 7 + 1)]
    words = list(range(7, vocab_size))

    def utterance() -> list[int]:
        return [2, *rng.choices(words, weights, k=rng.randint(1, 31)), 3]

    return [[utterance(), utterance(), utterance()] for _ in range(count)]


def seed_config(**overrides: Any) -> HREDConfig:
    values: dict[str, Any] = {
        "vocab_size": SEED_VOCAB,
        "pad_id": 0,
        "bos_id": 2,
        "eos_id": 3,
        "embedding_size": 300,
        "utterance_hidden": 300,
        "context_hidden": 300,
        "decoder_hidden": 300,
        "bidirectional": False,
        "dropout": 0.4,
    }
    return HREDConfig(**(values | overrides))


class StepRun:
    """Our optimisation steps in one setting (loss on the last or on all utterances, bf16
    autocast or not), timed in slices that a benchmark interleaves with the other settings'
    and the anchor's, so that the machine's drift within a run weighs on all of them alike."""

    def __init__(
        self,
        model: HRED,
        data: list[DialogueIds],
        batch_size: int,
        loss_on: LossOn,
        device: torch.device,
        cpu_bf16: bool = False,
    ) -> None:
        self.model, self.loss_on, self.device, self.cpu_bf16 = model, loss_on, device, cpu_bf16
        self.optimizer = adam(model.parameters(), lr=5e-4)  # the trainer's
        self.batches = [
            make_batch(data, indices, model.config.pad_id)
            for indices in bucketed_batches(data, batch_size, rng=random.Random(0))
        ]
        self.steps = self.dialogues = self.tokens = self.modelled = 0
        self.seconds = 0.0
        # One untimed pass first: oneDNN compiles a kernel for every new shape of a bf16
        # product, once per process, so a training run pays for that in its first epoch only.
        for batch in self.batches:
            self._step(batch)

    def _step(self, batch: DialogueBatch) -> int:
        """One optimisation step; returns the tokens it modelled."""
        self.model.train()
        batch = batch.to(self.device)
        with autocast(self.device, cpu_bf16=self.cpu_bf16):
            out = self.model(batch, loss_on=self.loss_on)
        self.optimizer.zero_grad(set_to_none=True)
        (out["loss_sum"] / out["tokens"]).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return int(out["tokens"])

    def run(self, seconds: float) -> None:
        """Optimisation steps for about ``seconds`` more (at least four)."""
        synchronize(self.device)
        started = time.perf_counter()
        while True:
            batch = self.batches[self.steps % len(self.batches)]
            self.modelled += self._step(batch)
            self.steps += 1
            self.dialogues += len(batch.turns)
            self.tokens += batch.num_tokens()
            if self.steps % 4 == 0:
                synchronize(self.device)
                if (elapsed := time.perf_counter() - started) >= seconds:
                    break
        self.seconds += elapsed

    def figures(self) -> dict[str, float]:
        return {
            "tokens_per_s": self.tokens / self.seconds,
            "dialogues_per_s": self.dialogues / self.seconds,
            "modelled_tokens_per_s": self.modelled / self.seconds,
            "steps": self.steps,
            "seconds": self.seconds,
            "padding_fraction": padding_fraction(self.batches),
        }


# Each setting's seconds are split into this many slices, taken in turns.
ROUNDS = 4


def run(
    *,
    device: str = "auto",
    threads: int = 2,
    batch_size: int | None = None,
    dialogues: int = 2000,
    seconds: float = 20.0,
    cpu_bf16: bool = True,
    anchor_too: bool = True,
) -> dict[str, Any]:
    """Throughput with the loss on the last utterance and on all of them (and, on a CPU with
    ``cpu_bf16``, under bfloat16 autocast), and the anchor's (``anchor_too``; a CPU at batch
    50 only), each timed for ``seconds`` in ``ROUNDS`` interleaved slices. ``threads`` 0
    leaves PyTorch's choice; no ``batch_size`` means 50 on a CPU (the anchor's) and 256 on
    CUDA."""
    resolved = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    batch_size = batch_size or (256 if resolved.type == "cuda" else 50)
    data = synthetic_triples(max(dialogues, batch_size * 4))
    model = HRED(seed_config()).to(resolved)
    ours = {
        "last": StepRun(model, data, batch_size, "last", resolved),
        "all": StepRun(model, data, batch_size, "all", resolved),
    }
    if resolved.type == "cpu" and cpu_bf16:  # bf16 autocast (`cpu_bf16` in training)
        ours["bf16"] = StepRun(model, data, batch_size, "last", resolved, cpu_bf16=True)
    anchor = None
    if anchor_too and resolved.type == "cpu" and batch_size == 50:  # where the anchor ran
        anchor = AnchorRun(data, SEED_VOCAB, batch_size)
    timed: list[StepRun | AnchorRun] = [*ours.values(), *([anchor] if anchor else [])]
    for _ in range(ROUNDS):
        for setting in timed:
            setting.run(seconds / ROUNDS)
    last, full = ours["last"].figures(), ours["all"].figures()
    bf16 = ours["bf16"].figures() if "bf16" in ours else None
    result: dict[str, Any] = {
        "device": str(resolved) if resolved.type == "cpu" else torch.cuda.get_device_name(resolved),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "parameters": model.num_parameters(),
        "mean_tokens_per_dialogue": sum(len(u) for d in data for u in d) / len(data),
        "tokens_per_s": last["tokens_per_s"],
        "dialogues_per_s": last["dialogues_per_s"],
        "modelled_tokens_per_s": last["modelled_tokens_per_s"],
        "tokens_per_s_full_loss": full["tokens_per_s"],
        "modelled_tokens_per_s_full_loss": full["modelled_tokens_per_s"],
        "padding_fraction": last["padding_fraction"],
        "tokens_per_s_cpu_bf16": bf16["tokens_per_s"] if bf16 else None,
        "anchor_tokens_per_s": anchor.tokens_per_s() if anchor else None,
        "load_avg_1m": load_average(),  # other work on the machine skews CPU figures
    }
    # fp32 and bf16 side by side, as ratios of one run (the machine's speed drifts between runs)
    if bf16:
        result["cpu_bf16_speedup"] = bf16["tokens_per_s"] / last["tokens_per_s"]
    if anchor_rate := result["anchor_tokens_per_s"]:
        result["speedup_vs_anchor"] = result["tokens_per_s"] / anchor_rate
        if bf16:
            result["speedup_vs_anchor_cpu_bf16"] = bf16["tokens_per_s"] / anchor_rate
    return result
