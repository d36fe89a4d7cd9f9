"""``rasa-hred bench generate``: reply latency and throughput of beam search, fp32 and auto dtype.

The model is the seed's configuration (embeddings and hidden states of 300, a vocabulary of
10,004, unidirectional utterance encoder, maxout output), untrained; every reply runs exactly
20 decoder steps (``force_length=20``, as the seed always did), trigram blocking on, MMI off.
Contexts are two utterances of about 18 tokens. The figures of one run share the machine's
state, so they compare with each other; figures of different runs may not.

Two copies of the model are timed: the float32 one, and the one in the dtype ``auto``
resolves to (``rasa_hred.core.precision``: bfloat16 on CPUs with AMX-BF16/AVX512-BF16 and
on GPUs that support it, else float32), its weights converted once as
``ResponseGenerator`` converts its own. The result is one JSON object:

- ``device``, ``threads``, ``torch``, ``steps``; ``auto_dtype``: what ``auto`` resolved to;
- ``load_avg_1m_at_start`` / ``load_avg_1m``: the 1-minute load average before and after
  (other processes on the machine distort CPU figures: threads wait for cores);
- ``beams``: per beam size, one object with

  - ``latency_ms_p50_fp32`` / ``latency_ms_p95_fp32`` and ``latency_ms_p50_auto`` /
    ``latency_ms_p95_auto``: one context, one reply, end to end (context encoding included),
    in float32 and in the auto dtype (``latency_runs`` of each, interleaved);
  - ``sequential_replies_per_s``: ``sequential_contexts`` contexts decoded one after another
    in float32;
  - ``batched_replies_per_s``: ``batched_contexts`` contexts (as many as the sequential
    run, four times as many on CUDA) in one ``decode`` call in the auto dtype, best of two;
  - ``batched_speedup``: ``batched_replies_per_s / sequential_replies_per_s`` (of the
    printed figures): what batching and the auto dtype together gain over the seed's way.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch

from rasa_hred.bench.common import load_average, percentile, synchronize
from rasa_hred.core.checkpoint import resolve_device
from rasa_hred.core.decoding import DecodingConfig, decode
from rasa_hred.core.model import HRED, HREDConfig
from rasa_hred.core.precision import resolve_dtype
from rasa_hred.core.vocab import SPECIAL_TOKENS
from rasa_hred.errors import UserError

VOCAB_SIZE = 10004
STEPS = 20
DEFAULT_BEAMS = (5, 20)

Contexts = list[list[list[int]]]


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


def in_dtype(model: HRED, dtype: torch.dtype) -> HRED:
    """``model`` with its weights in ``dtype``: itself when they already are, else a
    converted copy (the float32 figures need the original)."""
    if model.embedding.weight.dtype == dtype:
        return model
    return copy.deepcopy(model).to(dtype).eval()


def make_contexts(count: int, seed: int = 0) -> Contexts:
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


def _one_reply_ms(
    model: HRED, context: list[list[int]], config: DecodingConfig, device: torch.device
) -> float:
    start = time.perf_counter()
    decode(model, [context], config)
    synchronize(device)
    return (time.perf_counter() - start) * 1000.0


def bench_beam(
    fp32_model: HRED,
    auto_model: HRED,
    beam: int,
    contexts: Contexts,
    batch_contexts: Contexts,
    device: torch.device,
    latency_runs: int,
) -> dict[str, Any]:
    """One beam size's figures (see the module docstring)."""
    config = DecodingConfig(beam_size=beam, force_length=STEPS)
    for model in (fp32_model, auto_model):  # warm-up
        for context in contexts[:3]:
            decode(model, [context], config)
    decode(auto_model, batch_contexts, config)
    synchronize(device)

    latencies: dict[str, list[float]] = {"fp32": [], "auto": []}
    for i in range(latency_runs):  # interleaved, so that a burst of load hits both
        context = contexts[i % len(contexts)]
        latencies["fp32"].append(_one_reply_ms(fp32_model, context, config, device))
        latencies["auto"].append(_one_reply_ms(auto_model, context, config, device))

    start = time.perf_counter()
    for context in contexts:
        decode(fp32_model, [context], config)
    synchronize(device)
    sequential = round(len(contexts) / (time.perf_counter() - start), 1)

    batched_times = []
    for _ in range(2):
        start = time.perf_counter()
        results = decode(auto_model, batch_contexts, config)
        synchronize(device)
        batched_times.append(time.perf_counter() - start)
    assert all(len(r[0].tokens) == STEPS for r in results)
    batched = round(len(batch_contexts) / min(batched_times), 1)

    figures: dict[str, Any] = {"beam": beam}
    for name, values in latencies.items():
        figures[f"latency_ms_p50_{name}"] = round(statistics.median(values), 2)
        figures[f"latency_ms_p95_{name}"] = round(percentile(values, 0.95), 2)
    return figures | {
        "sequential_replies_per_s": sequential,
        "sequential_contexts": len(contexts),
        "batched_replies_per_s": batched,
        "batched_contexts": len(batch_contexts),
        "batched_speedup": round(batched / sequential, 2),
    }


def run(
    *,
    device: str = "auto",
    threads: int = 2,
    beams: list[int] | None = None,
    contexts: int = 64,
    latency_runs: int = 30,
) -> dict[str, Any]:
    """The figures of every beam size in ``beams`` (default 5 and 20) as one JSON-ready
    object (see the module docstring); ``threads`` is set for this whole process."""
    beams = list(beams or DEFAULT_BEAMS)
    if min(beams) < 1 or contexts < 1 or latency_runs < 1:
        raise UserError("--beams, --contexts and --latency-runs must be >= 1")
    load_start = load_average()
    resolved = resolve_device(device)
    torch.set_num_threads(threads)
    fp32_model = seed_model(resolved)
    auto_dtype = resolve_dtype("auto", resolved)
    auto_model = in_dtype(fp32_model, auto_dtype)
    sequential_contexts = make_contexts(contexts)
    batch_size = contexts * 4 if resolved.type == "cuda" else contexts
    batch_contexts = make_contexts(batch_size, seed=1)
    rows = [
        bench_beam(
            fp32_model,
            auto_model,
            beam,
            sequential_contexts,
            batch_contexts,
            resolved,
            latency_runs,
        )
        for beam in beams
    ]
    return {
        "device": str(resolved),
        "threads": threads,
        "torch": torch.__version__,
        "steps": STEPS,
        "auto_dtype": str(auto_dtype).removeprefix("torch."),
        "beams": rows,
        "load_avg_1m_at_start": load_start,
        "load_avg_1m": load_average(),
    }
