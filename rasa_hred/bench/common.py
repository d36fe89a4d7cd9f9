"""What the benchmarks share: percentiles and summaries of timings, the machine's load, a
free loopback port, and waiting for a GPU to finish."""

from __future__ import annotations

import os
import socket
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile (``fraction`` in [0, 1]) of a non-empty sequence."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values_ms: Sequence[float]) -> dict[str, Any]:
    """p50/p95/mean/max (ms, 2 decimals) and the count; ``None`` figures when empty."""
    if not values_ms:
        return {"p50_ms": None, "p95_ms": None, "mean_ms": None, "max_ms": None, "n": 0}
    return {
        "p50_ms": round(statistics.median(values_ms), 2),
        "p95_ms": round(percentile(values_ms, 0.95), 2),
        "mean_ms": round(statistics.fmean(values_ms), 2),
        "max_ms": round(max(values_ms), 2),
        "n": len(values_ms),
    }


def load_average() -> float | None:
    """The 1-minute load average (``None`` where the platform has none): other processes on
    the machine distort CPU timings (threads wait for cores)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timing covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
