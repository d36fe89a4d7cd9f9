"""PyTorch's intra-op threads in a serving process, and the measurements behind the default.

PyTorch's OpenMP threads wait for each other at every op, so one busy core stalls them all.
Measured on 2 cores (a bf16-capable CPU), figures from one session:

``rasa-hred bench generate --beams 5 --contexts 16`` (the seed-shaped model alone):

| intra-op threads | one reply, p50 | batched replies/s |
|---|---|---|
| 2, idle machine | 46 ms | 100 |
| 1, idle machine | 67 ms | 66 |
| 2, one busy neighbour process | 211 ms | 32 |
| 1, one busy neighbour process | 81 ms | 64 |

``rasa-hred bench serve`` (rps at 32 clients, batching on / off): 61 / 18 with PyTorch's
default of 2 threads, 48 / 11 with 1. ``rasa-hred bench rasa`` (the demo, 16 users, rps):
in_process 7.3 with 2 threads, 6.0 with 1; in_nlg 8.1 and 7.9.

So a serving process that has the cores to itself (``make run``, one ``rasa-hred serve`` per
machine or container; Rasa's own NLU in the same process did not change that) is fastest
with PyTorch's default, one thread per core, which stays the default. Where other busy
processes share the cores (``make run-scaled`` puts two replicas, the NLG server and Redis
on one machine), one thread is 2-2.6x faster: set the ``threads`` option / ``--threads``.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def use_serving_threads(requested: int | None = None) -> int:
    """Set PyTorch's intra-op threads to ``requested`` (``None``: leave PyTorch's default),
    log the count once per load, and return it."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be >= 1, got {requested}")
        torch.set_num_threads(requested)
    threads = torch.get_num_threads()
    source = "the threads option" if requested is not None else "PyTorch's default"
    logger.info(f"HRED generation: {threads} PyTorch thread(s) ({source})")
    return threads
