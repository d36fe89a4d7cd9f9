"""Per-row reductions of a decoder step's logits that decoding needs: each row's logsumexp
(log p = logit - logsumexp) and the largest logit of each block of tokens (beam search), and
the mass above a threshold (sampling's nucleus test).

On the CPU they come from ``_reductions.c``, which reads the bf16 or float32 logits in place:
PyTorch's way (cast to float32, ``log_softmax``, a block ``amax`` over the result) writes
three [rows, vocabulary] tensors on the way and was a third of a batched beam-search step.
Measured at 160 rows x 10,004 bf16 logits on 2 cores: 0.7 ms against 1.3 ms. Where the
library is missing (it is built at install time and optional) or the tensor lives on a GPU,
the same results come from PyTorch ops. The C code runs in the calling thread, without the
GIL.
"""

from __future__ import annotations

import ctypes
import logging
import math
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

_LONG = ctypes.c_long
_POINTER = ctypes.c_void_p


@cache
def _library() -> ctypes.CDLL | None:
    try:
        from rasa_hred.core import _reductions  # type: ignore[attr-defined]

        library = ctypes.CDLL(_reductions.__file__)
    except ImportError:
        logger.debug("rasa_hred.core._reductions is not built: beam search reduces rows in PyTorch")
        return None
    except OSError as error:  # built, but not loadable here (another machine's build)
        logger.warning("rasa_hred.core._reductions does not load (%s): using PyTorch ops", error)
        return None
    library.hred_logsumexp.argtypes = [_POINTER, ctypes.c_int, _LONG, _LONG, _LONG, _POINTER]
    library.hred_logsumexp.restype = None
    library.hred_block_max.argtypes = [_POINTER, ctypes.c_int, _LONG, _LONG, _LONG, _LONG, _POINTER]
    library.hred_block_max.restype = None
    library.hred_mass_above.argtypes = [_POINTER, _LONG, _LONG, _LONG, _POINTER, _POINTER]
    library.hred_mass_above.restype = None
    library.hred_choose_avx512.argtypes = [ctypes.c_int]
    library.hred_choose_avx512.restype = ctypes.c_int
    return library


def compiled() -> bool:
    """Whether the C reductions are available in this installation."""
    return _library() is not None


def choose_avx512(choice: bool | None) -> bool:
    """Which loops the C code runs: ``True`` AVX-512 (where the CPU has it), ``False`` plain
    C, ``None`` what the CPU has (the default). Returns whether AVX-512 is now in use. For
    tests, which check both against PyTorch."""
    library = _library()
    if library is None:
        return False
    return bool(library.hred_choose_avx512(-1 if choice is None else int(choice)))


def _reads_in_place(logits: Tensor) -> bool:
    return (
        logits.device.type == "cpu"
        and logits.dim() == 2
        and logits.dtype in (torch.bfloat16, torch.float32)
        and logits.stride(1) == 1
        and compiled()
    )


def logsumexp(logits: Tensor, *, native: bool = True) -> Tensor:
    """[R, V] -> [R] float32: ``log(sum(exp(row)))``; -inf for a row with no finite value.
    ``native=False`` uses PyTorch even where the C code could run (tests compare them)."""
    if not (native and _reads_in_place(logits)):
        return torch.logsumexp(logits.float(), dim=1)
    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.float32)
    bf16 = int(logits.dtype == torch.bfloat16)
    library = _library()
    assert library is not None
    library.hred_logsumexp(logits.data_ptr(), bf16, rows, vocab, logits.stride(0), out.data_ptr())
    return out


def block_max(logits: Tensor, block: int, *, native: bool = True) -> Tensor:
    """[R, V] -> [R, ceil(V / block)] float32: the largest value of each block of ``block``
    columns (the last block holds the columns left over)."""
    rows, vocab = logits.shape
    blocks = -(-vocab // block)
    if not (native and _reads_in_place(logits)):
        padded = F.pad(logits, (0, blocks * block - vocab), value=-math.inf)
        return padded.unflatten(1, (blocks, block)).amax(2).float()
    out = torch.empty(rows, blocks, dtype=torch.float32)
    bf16 = int(logits.dtype == torch.bfloat16)
    library = _library()
    assert library is not None
    library.hred_block_max(
        logits.data_ptr(), bf16, rows, vocab, logits.stride(0), block, out.data_ptr()
    )
    return out


def mass_above(probs: Tensor, threshold: Tensor, *, native: bool = True) -> Tensor:
    """[R, V] float32, [R] -> [R]: each row's sum of the values above its threshold. (A
    broadcast comparison and a sum in PyTorch took 200-500 us at 16 x 8,000.)"""
    if not (native and probs.dtype == torch.float32 and _reads_in_place(probs)):
        return torch.where(probs > threshold.unsqueeze(1), probs, 0.0).sum(dim=1)
    rows, vocab = probs.shape
    limits = threshold.float().contiguous()
    out = torch.empty(rows, dtype=torch.float32)
    library = _library()
    assert library is not None
    library.hred_mass_above(
        probs.data_ptr(), rows, vocab, probs.stride(0), limits.data_ptr(), out.data_ptr()
    )
    return out
