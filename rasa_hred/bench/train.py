"""``rasa-hred bench train``: training throughput on synthetic MovieTriples-shaped data.

The anchor (the seed's HRED, hsgodhia/hred) trained at the seed's configuration (embeddings
and hidden 300, vocabulary 10,004, batch 50, teacher forcing, loss on the last utterance
only) on triples averaging ~53 tokens. This benchmark builds data of that shape, times full
optimisation steps (forward, backward, clipping, Adam) after one untimed pass over its
batches (a bf16 product's first run of each shape compiles a oneDNN kernel), and on a CPU at
batch 50 times the anchor's work in the same run (``rasa_hred/bench/anchor.py``), half before
and half after the rest, so that the speedups are ratios of one run.
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
from rasa_hred.core.model import HRED, HREDConfig, LossOn
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


def measure(
    model: HRED,
    data: list[DialogueIds],
    batch_size: int,
    loss_on: LossOn,
    device: torch.device,
    seconds: float,
    cpu_bf16: bool = False,
) -> dict[str, float]:
    """Run optimisation steps for about ``seconds`` after one untimed pass over the batches
    and report throughput."""
    optimizer = adam(model.parameters(), lr=5e-4)  # the trainer's
    batches = [
        make_batch(data, indices, model.config.pad_id)
        for indices in bucketed_batches(data, batch_size, rng=random.Random(0))
    ]
    # One untimed pass first: oneDNN compiles a kernel for every new shape of a bf16
    # product, once per process, so a training run pays for that in its first epoch only.
    warmup = len(batches)
    model.train()
    dialogues = tokens = modelled = steps = 0
    started = None
    for step in range(10**9):
        batch = batches[step % len(batches)].to(device)
        with autocast(device, cpu_bf16=cpu_bf16):
            out = model(batch, loss_on=loss_on)
        optimizer.zero_grad(set_to_none=True)
        (out["loss_sum"] / out["tokens"]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step + 1 == warmup:
            synchronize(device)
            started = time.perf_counter()
            continue
        if started is None:
            continue
        steps += 1
        dialogues += len(batch.turns)
        tokens += batch.num_tokens()
        modelled += int(out["tokens"])
        if steps % 4 == 0:
            synchronize(device)
            if time.perf_counter() - started >= seconds:
                break
    synchronize(device)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    return {
        "tokens_per_s": tokens / elapsed,
        "dialogues_per_s": dialogues / elapsed,
        "modelled_tokens_per_s": modelled / elapsed,
        "steps": steps,
        "seconds": elapsed,
        "padding_fraction": padding_fraction(batches),
    }


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
    50 only). ``threads`` 0 leaves PyTorch's choice; no ``batch_size`` means 50 on a CPU (the
    anchor's) and 256 on CUDA."""
    resolved = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    batch_size = batch_size or (256 if resolved.type == "cuda" else 50)
    data = synthetic_triples(max(dialogues, batch_size * 4))
    # The anchor ran on a CPU at batch 50; its figure brackets ours (see the docstring).
    anchor = None
    if anchor_too and resolved.type == "cpu" and batch_size == 50:
        anchor = AnchorRun(data, SEED_VOCAB, batch_size)
        anchor.run(seconds / 2)
    model = HRED(seed_config()).to(resolved)
    last = measure(model, data, batch_size, "last", resolved, seconds)
    full = measure(model, data, batch_size, "all", resolved, seconds)
    # On a CPU, also bfloat16 autocast (`cpu_bf16` in training).
    bf16 = None
    if resolved.type == "cpu" and cpu_bf16:
        bf16 = measure(model, data, batch_size, "last", resolved, seconds, cpu_bf16=True)
    if anchor:
        anchor.run(seconds / 2)
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
    if anchor := result["anchor_tokens_per_s"]:
        result["speedup_vs_anchor"] = result["tokens_per_s"] / anchor
        if bf16:
            result["speedup_vs_anchor_cpu_bf16"] = bf16["tokens_per_s"] / anchor
    return result
