"""``rasa-hred bench generate``: reply latency and throughput of beam search.

The model is the seed's configuration (embeddings and hidden states of 300, a vocabulary of
10,004, unidirectional utterance encoder, maxout output), untrained; every reply runs exactly
20 decoder steps (``force_length=20``, as the seed always did), trigram blocking on, MMI off.
Contexts are two utterances of about 18 tokens. Per beam size it reports:

- ``latency_ms_p50`` / ``latency_ms_p95``: one context, one reply, end to end (context
  encoding included);
- ``sequential_replies_per_s``: ``--contexts`` contexts decoded one after another;
- ``batched_replies_per_s``: the same contexts in one ``decode`` call (four times as many
  on CUDA), and ``batched_speedup``, the ratio of the two.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from rasa_hred.bench.common import load_average, percentile, synchronize
from rasa_hred.core.checkpoint import resolve_device
from rasa_hred.core.decoding import DecodingConfig, decode
from rasa_hred.core.model import HRED, HREDConfig
from rasa_hred.core.vocab import SPECIAL_TOKENS

VOCAB_SIZE = 10004
STEPS = 20


def seed_model(device: torch.device) -> HRED:
    """The seed's HRED shape (untrained, seeded)."""
    torch.manual_seed(0)
    config = HREDConfig(
        vocab_size=VOCAB_SIZE,
        embedding_size=300,
        utterance_hidden=300,
        context_hidden=300,
        decoder_hidden=300,
        bidirectional=False,
        maxout=True,
    )
    return HRED(config).to(device).eval()


def make_contexts(count: int, seed: int = 0) -> list[list[list[int]]]:
    """``count`` contexts of two ``<s> .. </s>`` utterances of 16-20 words each."""
    generator = torch.Generator().manual_seed(seed)
    first_word = len(SPECIAL_TOKENS)
    contexts = []
    for _ in range(count):
        utterances = []
        for _ in range(2):
            length = int(torch.randint(16, 21, (1,), generator=generator))
            words = torch.randint(first_word, VOCAB_SIZE, (length,), generator=generator)
            utterances.append([2, *words.tolist(), 3])
        contexts.append(utterances)
    return contexts


def bench_beam(
    model: HRED,
    beam: int,
    contexts: list[list[list[int]]],
    batch_contexts: list[list[list[int]]],
    device: torch.device,
    latency_runs: int,
) -> dict[str, Any]:
    config = DecodingConfig(beam_size=beam, force_length=STEPS)
    for context in contexts[:3]:  # warm-up
        decode(model, [context], config)
    decode(model, batch_contexts, config)
    synchronize(device)

    latencies = []
    for i in range(latency_runs):
        context = contexts[i % len(contexts)]
        start = time.perf_counter()
        decode(model, [context], config)
        synchronize(device)
        latencies.append((time.perf_counter() - start) * 1000.0)

    start = time.perf_counter()
    for context in contexts:
        decode(model, [context], config)
    synchronize(device)
    sequential = len(contexts) / (time.perf_counter() - start)

    batched_times = []
    for _ in range(2):
        start = time.perf_counter()
        results = decode(model, batch_contexts, config)
        synchronize(device)
        batched_times.append(time.perf_counter() - start)
    assert all(len(r[0].tokens) == STEPS for r in results)
    batched = len(batch_contexts) / min(batched_times)
    return {
        "beam": beam,
        "latency_ms_p50": round(statistics.median(latencies), 2),
        "latency_ms_p95": round(percentile(latencies, 0.95), 2),
        "sequential_replies_per_s": round(sequential, 1),
        "batched_replies_per_s": round(batched, 1),
        "batched_contexts": len(batch_contexts),
        "batched_speedup": round(batched / sequential, 2),
        "steps": STEPS,
    }


def run(
    *,
    device: str = "auto",
    threads: int = 2,
    beams: list[int] | None = None,
    contexts: int = 64,
    latency_runs: int = 30,
) -> list[dict[str, Any]]:
    """The figures of every beam size in ``beams`` (default 5 and 20), one dict each."""
    resolved = resolve_device(device)
    torch.set_num_threads(threads)
    model = seed_model(resolved)
    sequential_contexts = make_contexts(contexts)
    batch_size = contexts * 4 if resolved.type == "cuda" else contexts
    batch_contexts = make_contexts(batch_size, seed=1)
    results = []
    for beam in beams or [5, 20]:
        load_before = load_average()
        figures = bench_beam(
            model, beam, sequential_contexts, batch_contexts, resolved, latency_runs
        )
        figures.update(
            device=str(resolved),
            threads=threads,
            torch=torch.__version__,
            # other processes on the machine distort CPU figures (threads wait for cores)
            load_average_1m=[load_before, load_average()],
        )
        results.append(figures)
    return results
