"""CPU kernels for the hot paths that PyTorch's own ops serve poorly on 2 cores.

Decoding: each row's logsumexp (log p = logit - logsumexp) and the largest logit of each
block of tokens (beam search), and the mass above a threshold (sampling's nucleus test).
PyTorch's way (cast to float32, ``log_softmax``, a block ``amax`` over the result) writes
three [rows, vocabulary] tensors on the way and was a third of a batched beam-search step;
measured at 160 rows x 10,004 bf16 logits: 0.7 ms against 1.3 ms.

Training: the softmax cross-entropy over the output layer's logits with its gradient,
dropout, and a GRU layer's recurrence (see each function).

They come from ``_kernels.c``, which reads bf16 or float32 tensors in place and runs without
the GIL. Where the library is missing (it is built at install time and optional) or a tensor
lives on a GPU, the same results come from PyTorch ops.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rasa_hred.core.precision import stable_row_count

logger = logging.getLogger(__name__)

_LONG = ctypes.c_long
_POINTER = ctypes.c_void_p


@cache
def _library() -> ctypes.CDLL | None:
    try:
        from rasa_hred.core import _kernels  # type: ignore[attr-defined]

        library = ctypes.CDLL(_kernels.__file__)
    except ImportError:
        logger.debug("rasa_hred.core._kernels is not built: PyTorch ops stand in")
        return None
    except OSError as error:  # built, but not loadable here (another machine's build)
        logger.warning("rasa_hred.core._kernels does not load (%s): using PyTorch ops", error)
        return None
    library.hred_logsumexp.argtypes = [_POINTER, ctypes.c_int, _LONG, _LONG, _LONG, _POINTER]
    library.hred_logsumexp.restype = None
    library.hred_block_max.argtypes = [_POINTER, ctypes.c_int, _LONG, _LONG, _LONG, _LONG, _POINTER]
    library.hred_block_max.restype = None
    library.hred_mass_above.argtypes = [_POINTER, _LONG, _LONG, _LONG, _POINTER, _POINTER]
    library.hred_mass_above.restype = None
    # logits, bf16, rows, vocab, stride, bias, targets, ignore, then each one's own
    rows: list[type[ctypes._SimpleCData[Any]]] = [_POINTER, ctypes.c_int, _LONG, _LONG, _LONG]
    rows += [_POINTER, _POINTER, ctypes.c_int64]
    library.hred_xent_forward.argtypes = [*rows, _POINTER, _POINTER]
    library.hred_xent_forward.restype = None
    library.hred_xent_backward.argtypes = [*rows, _POINTER, ctypes.c_float, _POINTER]
    library.hred_xent_backward.restype = None
    library.hred_dropout.argtypes = [_POINTER, ctypes.c_int, _LONG, _LONG, ctypes.c_uint64]
    library.hred_dropout.argtypes += [ctypes.c_uint32, ctypes.c_float, _POINTER]
    library.hred_dropout.restype = None
    # gi, gi_stride, gh, bf16, bias, h, h_stride, rows, size, out, out_stride, next, carried,
    # saved
    library.hred_gru_forward.argtypes = [_POINTER, _LONG, _POINTER, ctypes.c_int, _POINTER]
    library.hred_gru_forward.argtypes += [_POINTER, _LONG, _LONG, _LONG, _POINTER, _LONG]
    library.hred_gru_forward.argtypes += [_POINTER, _LONG, _POINTER]
    library.hred_gru_forward.restype = None
    # saved, h, h_stride, grad_out, grad_stride, dh, rows, size, dgi, dgi_stride, dgh, bf16
    library.hred_gru_backward.argtypes = [_POINTER, _POINTER, _LONG, _POINTER, _LONG, _POINTER]
    library.hred_gru_backward.argtypes += [_LONG, _LONG, _POINTER, _LONG, _POINTER, ctypes.c_int]
    library.hred_gru_backward.restype = None
    library.hred_choose_avx512.argtypes = [ctypes.c_int]
    library.hred_choose_avx512.restype = ctypes.c_int
    return library


def compiled() -> bool:
    """Whether the C kernels are available in this installation."""
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


# --- training's loss ----------------------------------------------------------------------


def linear_cross_entropy(
    features: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    ignore_index: int = -100,
    workspace: Workspace | None = None,
) -> Tensor:
    """The summed cross-entropy of ``F.linear(features, weight, bias)`` against ``targets``
    (rows whose target is ``ignore_index`` count nothing), computed as a training step needs
    it: the output layer and its loss in one autograd node.

    PyTorch's way writes five [tokens, vocabulary] tensors a step (the bias broadcast into
    the product's output, the float32 copy, log_softmax, a zero-filled gradient,
    log_softmax's backward); in float32 at the seed shape they are over glibc's mmap
    threshold, so each is freshly mapped and page-faulted in. Here the product writes the
    logits into ``workspace`` (kept from step to step), the C code reads them with the bias
    added in place, and the backward pass writes the gradient over them, summing the bias'
    gradient on the way. (The loss alone, forward and backward, at 1,600 x 10,004 on 2
    cores: 41 against 93 ms in float32, 20 against 114 ms in bf16.) Under CPU autocast the
    product runs in its dtype, as ``F.linear`` would. Without the C code, or on a GPU, it is
    ``F.cross_entropy`` of ``F.linear``."""
    vocab = weight.size(0)
    native = features.device.type == "cpu" and features.dim() == 2 and compiled()
    if not native:
        logits = F.linear(features, weight, bias)
        return F.cross_entropy(logits.float(), targets, reduction="sum", ignore_index=ignore_index)
    wrong = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bool(wrong.any()):
        bad = int(targets[wrong][0])
        raise IndexError(f"target {bad} is out of bounds for {vocab} classes")
    return _LinearCrossEntropy.apply(
        features, weight, bias, targets.contiguous(), ignore_index, workspace or Workspace()
    )


class Workspace:
    """Memory for one [rows, columns] tensor that lives from a forward pass to its backward
    pass, reused by the next step. While a step's graph still needs it (until its backward
    has run or the graph is gone), a second forward pass gets fresh memory instead."""

    def __init__(self) -> None:
        self._memory: Tensor | None = None
        self._user: weakref.ref[Any] | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> Workspace:
        return Workspace()  # a copied model starts with its own, empty

    def take(self, rows: int, columns: int, dtype: torch.dtype, user: Any) -> Tensor:
        if self._user is not None and self._user() is not None:
            return torch.empty(rows, columns, dtype=dtype)
        size = rows * columns
        if self._memory is None or self._memory.dtype != dtype or self._memory.numel() < size:
            self._memory = None  # freed before the larger one is allocated
            self._memory = torch.empty(size, dtype=dtype)
        self._user = weakref.ref(user)
        return self._memory[:size].view(rows, columns)

    def release(self, user: Any) -> None:
        if self._user is not None and self._user() is user:
            self._user = None


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        features: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        ignore_index: int,
        workspace: Workspace,
    ) -> Tensor:
        dtype = features.dtype
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
        if dtype not in (torch.float32, torch.bfloat16):
            dtype = torch.float32
        rows, vocab = features.size(0), weight.size(0)
        with torch.autocast("cpu", enabled=False):
            inputs, matrix = features.to(dtype), weight.to(dtype)
            logits = workspace.take(rows, vocab, dtype, ctx)
            torch.mm(inputs, matrix.t(), out=logits)
        offsets = bias.detach().float().contiguous() if bias is not None else None
        lse = torch.empty(rows, dtype=torch.float32)
        losses = torch.empty(rows, dtype=torch.float32)
        library = _library()
        assert library is not None

        def part(index: int, start: int, stop: int) -> None:
            library.hred_xent_forward(
                _row_pointer(logits, start), int(dtype == torch.bfloat16), stop - start, vocab,
                logits.stride(0), _pointer(offsets), _row_pointer(targets, start), ignore_index,
                _row_pointer(lse, start), _row_pointer(losses, start),
            )  # fmt: skip

        _in_parallel(part, rows)
        ctx.save_for_backward(inputs, matrix, logits, lse, targets, offsets)
        ctx.ignore_index, ctx.workspace = ignore_index, workspace
        ctx.dtypes = (features.dtype, weight.dtype, None if bias is None else bias.dtype)
        return losses.sum()

    @staticmethod
    def backward(ctx: Any, grad_sum: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.workspace is None:  # the logits were overwritten by the first backward pass
            raise RuntimeError("linear_cross_entropy's graph can be run backwards only once")
        inputs, matrix, logits, lse, targets, offsets = ctx.saved_tensors
        rows, vocab = logits.shape
        parts = _parts(rows, _ROWS_PER_THREAD)
        bias_grads = torch.zeros(parts, vocab) if offsets is not None else None
        scale = float(grad_sum)
        library = _library()
        assert library is not None

        def part(index: int, start: int, stop: int) -> None:
            library.hred_xent_backward(
                _row_pointer(logits, start), int(logits.dtype == torch.bfloat16), stop - start,
                vocab, logits.stride(0), _pointer(offsets), _row_pointer(targets, start),
                ctx.ignore_index, _row_pointer(lse, start), scale,
                None if bias_grads is None else _row_pointer(bias_grads, index),
            )  # fmt: skip

        _in_parallel(part, rows)
        grad = logits  # now the loss' gradient with respect to the logits
        features_dtype, weight_dtype, bias_dtype = ctx.dtypes
        grad_features = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_features = (grad @ matrix).to(features_dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = (grad.t() @ inputs).to(weight_dtype)
        if bias_grads is not None and ctx.needs_input_grad[2]:
            grad_bias = bias_grads.sum(0).to(bias_dtype)
        ctx.workspace.release(ctx)
        ctx.workspace = None
        return grad_features, grad_weight, grad_bias, None, None, None


def dropout(x: Tensor, p: float, *, native: bool = True) -> Tensor:
    """Inverted dropout: each element zeroed with probability ``p``, the rest scaled by
    ``1 / (1 - p)``. On the CPU the C code draws element i's mask from a hash of (seed, i),
    the seed from PyTorch's generator (so ``torch.manual_seed`` fixes it), and the backward
    pass draws the same mask again instead of storing one. PyTorch's generator draws one
    float at a time (about 5 ns each); the random numbers alone were 4-5% of a training step
    at the seed shape. Dropout of [1600, 900] on 2 cores: 0.9-1.1 ms against 10.7 ms in
    float32 and 18.7 ms in bf16."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), not {p}")
    if p == 0.0:
        return x
    in_place = x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float32)
    if not (native and in_place and compiled()):
        return x * (torch.rand_like(x) >= p) * (1.0 / (1.0 - p))
    seed = int(torch.randint(0, 2**63 - 1, ()))
    threshold = min(round(p * 2**32), 2**32 - 1)
    return _Dropout.apply(x.contiguous(), seed, threshold, 1.0 / (1.0 - p))


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, seed: int, threshold: int, scale: float) -> Tensor:
        ctx.mask = (seed, threshold, scale)
        return _masked(x, seed, threshold, scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        return _masked(grad.contiguous(), *ctx.mask), None, None, None


def _masked(x: Tensor, seed: int, threshold: int, scale: float) -> Tensor:
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    bf16 = int(x.dtype == torch.bfloat16)
    library = _library()
    assert library is not None

    def part(index: int, start: int, stop: int) -> None:
        library.hred_dropout(
            _row_pointer(x.view(-1), start), bf16, start, stop - start, seed, threshold, scale,
            _row_pointer(out.view(-1), start),
        )  # fmt: skip

    _in_parallel(part, x.numel(), grain=_ELEMENTS_PER_THREAD)
    return out


# --- training's recurrences ----------------------------------------------------------------


def gru_layer_runs_natively(projected: Tensor) -> bool:
    """Whether :func:`gru_layer` can run the C code for input projections ``projected``."""
    return (
        projected.device.type == "cpu"
        and projected.dtype in (torch.float32, torch.bfloat16)
        and compiled()
    )


def gru_layer(
    projected: Tensor,
    hidden: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor,
    active: list[int],
) -> tuple[Tensor, Tensor]:
    """One direction of one GRU layer over rows sorted by length, for training on a CPU:
    ``projected`` [N, L, 3H] is ``x W_ih^T + b_ih`` for every step, ``hidden`` [N, H] the
    start state, and ``active[t]`` rows (a prefix) run at step t. Returns the outputs [N, L,
    H] in float32 (zeros past each length) and the final states [N, H].

    The step's products (``h W_hh^T``) run in ``projected``'s dtype; each step's gates are one
    C pass forward and one backward, where PyTorch ran a dozen small ops and autograd nodes
    forward and twice as many backward. The backward pass keeps every step's gradient with
    respect to ``h W_hh^T`` and computes W_hh's gradient with one product at the end, instead
    of a product and an accumulation per step. Training steps at the seed shape on 2 cores,
    timed in turns with the PyTorch-ops recurrence: 18.0k against 14.9k tokens/s under bf16
    autocast, 11.3k against 10.2k in float32. (Caller: ``recurrent.run_gru``, which checks
    :func:`gru_layer_runs_natively` first.)"""
    rows, steps, gates = projected.shape
    size = weight_hh.size(1)
    # the C code writes through raw pointers: the shapes are checked here, not trusted
    if (
        gates != 3 * size
        or weight_hh.shape != (gates, size)
        or bias_hh.shape != (gates,)
        or hidden.shape != (rows, size)
    ):
        raise ValueError(
            f"gru_layer: projected {tuple(projected.shape)}, hidden {tuple(hidden.shape)}, "
            f"weight_hh {tuple(weight_hh.shape)} and bias_hh {tuple(bias_hh.shape)} disagree"
        )
    ordered = all(a >= b for a, b in pairwise(active))
    if len(active) != steps or not ordered or (steps and (active[0] != rows or active[-1] < 1)):
        raise ValueError(
            f"gru_layer: active must hold {steps} non-increasing row counts from {rows} to "
            f">= 1, not {active!r}"
        )
    return _GRULayer.apply(projected.contiguous(), hidden, weight_hh, bias_hh, tuple(active))


class _GRULayer(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        projected: Tensor,
        hidden: Tensor,
        weight_hh: Tensor,
        bias_hh: Tensor,
        active: tuple[int, ...],
    ) -> tuple[Tensor, Tensor]:
        rows, steps, gates = projected.shape
        size = gates // 3
        dtype = projected.dtype
        starts = [0]
        for running in active:
            starts.append(starts[-1] + running)
        with torch.autocast("cpu", enabled=False):
            weight = weight_hh.detach().to(dtype)
            bias = bias_hh.detach().float().contiguous()
            start = hidden.detach().float().contiguous()
            # each step's h, packed; the rows past them (few shapes for oneDNN's bf16
            # products) are zeros, and so is their gradient in the backward pass
            packed = stable_row_count(starts[-1], projected)
            inputs = torch.empty(packed, size, dtype=dtype)
            inputs[:rows] = start
            inputs[starts[-1] :] = 0.0
            saved = torch.empty(starts[-1], 4 * size)  # r, z, n, gh_n + bias_n
            out = torch.zeros(rows, steps, size)
            products = torch.empty(rows, gates, dtype=dtype)
            library = _library()
            assert library is not None
            bf16 = int(dtype == torch.bfloat16)
            for t, running in enumerate(active):
                first = starts[t]
                torch.mm(inputs[first : first + running], weight.t(), out=products[:running])
                state, state_stride = (start, size) if t == 0 else (out[:, t - 1], steps * size)
                carried = active[t + 1] if t + 1 < steps else 0
                library.hred_gru_forward(
                    projected[:, t].data_ptr(), steps * gates, products.data_ptr(), bf16,
                    bias.data_ptr(), state.data_ptr(), state_stride, running, size,
                    out[:, t].data_ptr(), steps * size,
                    _row_pointer(inputs, starts[t + 1]) if carried else None, carried,
                    _row_pointer(saved, first),
                )  # fmt: skip
            lengths = (torch.tensor(active).unsqueeze(1) > torch.arange(rows)).sum(0)
            final = out[torch.arange(rows), lengths - 1]
        ctx.save_for_backward(start, weight, inputs, saved, out)
        ctx.active, ctx.starts = active, starts
        ctx.dtypes = (projected.dtype, hidden.dtype, weight_hh.dtype, bias_hh.dtype)
        return out, final.to(hidden.dtype)

    @staticmethod
    def backward(
        ctx: Any, grad_out: Tensor | None, grad_final: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        start, weight, inputs, saved, out = ctx.saved_tensors
        active, starts = ctx.active, ctx.starts
        rows, steps, size = out.shape
        dtype = weight.dtype
        bf16 = int(dtype == torch.bfloat16)
        library = _library()
        assert library is not None
        with torch.autocast("cpu", enabled=False):
            if grad_final is None:
                dh = torch.zeros(rows, size)
            else:
                dh = grad_final.float().contiguous().clone()
            if grad_out is not None:
                grad_out = grad_out.float().contiguous()
            grad_projected = torch.zeros(rows, steps, 3 * size, dtype=dtype)
            grad_products = torch.empty(inputs.size(0), 3 * size, dtype=dtype)  # as inputs
            grad_products[starts[-1] :] = 0.0
            for t in reversed(range(steps)):
                running, first = active[t], starts[t]
                state, state_stride = (start, size) if t == 0 else (out[:, t - 1], steps * size)
                library.hred_gru_backward(
                    _row_pointer(saved, first), state.data_ptr(), state_stride,
                    None if grad_out is None else grad_out[:, t].data_ptr(),
                    steps * size, dh.data_ptr(), running, size,
                    grad_projected[:, t].data_ptr(), steps * 3 * size,
                    _row_pointer(grad_products, first), bf16,
                )  # fmt: skip
                step_grad = grad_products[first : first + running]
                if t == 0 and not ctx.needs_input_grad[1]:
                    break
                if bf16:
                    dh[:running] += step_grad @ weight
                else:
                    dh[:running].addmm_(step_grad, weight)
            grad_weight = grad_bias = None
            if ctx.needs_input_grad[2]:  # one product over every step's rows
                grad_weight = (grad_products.t() @ inputs).to(ctx.dtypes[2])
            if ctx.needs_input_grad[3]:
                grad_bias = grad_products.sum(0, dtype=torch.float32).to(ctx.dtypes[3])
        return grad_projected, dh.to(ctx.dtypes[1]), grad_weight, grad_bias, None


def _row_pointer(tensor: Tensor, row: int) -> int:
    return tensor.data_ptr() + row * tensor.stride(0) * tensor.element_size()


def _pointer(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


# Below this much work a second thread costs more than it saves.
_ROWS_PER_THREAD = 64
_ELEMENTS_PER_THREAD = 1 << 16


def _parts(rows: int, grain: int) -> int:
    return max(1, min(torch.get_num_threads(), rows // grain))


def _in_parallel(
    part: Callable[[int, int, int], None], rows: int, grain: int = _ROWS_PER_THREAD
) -> None:
    """``part(index, start, stop)`` over ``rows`` split into ``_parts(rows, grain)`` parts,
    one per PyTorch intra-op thread and at least ``grain`` rows each: the C code releases the
    GIL, so the parts run at once on as many cores as PyTorch's own ops."""
    parts = _parts(rows, grain)
    bounds = [rows * k // parts for k in range(parts + 1)]
    if parts == 1:
        part(0, 0, rows)
        return
    pending = [
        _pool().submit(part, index, bounds[index], bounds[index + 1]) for index in range(1, parts)
    ]
    part(0, bounds[0], bounds[1])
    for future in pending:
        future.result()


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="kernels")
