"""Which floating-point type inference runs in.

bfloat16 halves the bytes every matrix product moves and, on CPUs with AMX-BF16 or
AVX512-BF16 units, runs the products on them: the HRED's output layer (300 x 10,004) is 2.2x
faster at 5 rows and 3.3x at 320 rows there. Elsewhere bf16 is emulated and slower than fp32,
so ``auto`` asks the CPU at run time instead of assuming.

Torch is imported inside the functions: the CLI takes ``DTYPE_NAMES`` for its ``--dtype``
choices and must not pay for importing torch to print ``--help``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("auto", "float32", "bfloat16")


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX-BF16 or AVX512-BF16)."""
    import torch

    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    for name in checks:
        check = getattr(torch.cpu, name, None)  # private helpers: absent in some builds
        try:
            if check is not None and check():
                return True
        except RuntimeError:
            continue
    return False


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a CUDA GPU that supports it and on a CPU with bf16 units, float32
    elsewhere; ``float32``/``bfloat16`` as asked. Anything else is a ``ValueError``."""
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = dtype
    if name in dtypes:
        return dtypes[name]
    if name != "auto":
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, not {dtype!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_has_bf16_units():
        return torch.bfloat16
    return torch.float32


def describe(dtype: torch.dtype, device: torch.device) -> str:
    """One line for the log: what was chosen, and why when ``auto`` chose it."""
    name = str(dtype).removeprefix("torch.")
    if device.type == "cpu":
        units = "has" if cpu_has_bf16_units() else "has no"
        return f"{name} on the CPU (it {units} bf16 matrix units)"
    return f"{name} on {device}"


#: Row counts of bfloat16 matrix products on the CPU are rounded up to a multiple of this.
#: oneDNN compiles a kernel for every new shape of a bf16 product and keeps about a thousand;
#: the output layer's row count is a batch's token count, new for almost every batch, so
#: without rounding most training steps pay for compiling instead of multiplying (measured:
#: a 300 x 10,004 output layer's forward and backward at 400-1,500 rows, 181 ms a step with
#: new shapes, 58 ms at a fixed shape; float32 is 145-155 ms either way).
BF16_ROW_MULTIPLE = 64


def stable_row_count(rows: int, like: torch.Tensor) -> int:
    """How many rows to compute ``rows`` rows at, for a product with the dtype and device of
    ``like``: rounded up to ``BF16_ROW_MULTIPLE`` where it runs in bf16 on a CPU (bf16 weights
    or autocast), else ``rows``. The extra rows are padding whose results are dropped."""
    import torch

    if like.device.type != "cpu":
        return rows
    if like.dtype != torch.bfloat16 and not torch.is_autocast_enabled("cpu"):
        return rows
    return rows + -rows % BF16_ROW_MULTIPLE
