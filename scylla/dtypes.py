"""The dtype a stage runs in, decided in one place.

On CUDA the default is bfloat16. On a CPU it is bfloat16 where the CPU has bf16 matrix units (Intel AMX,
``amx_bf16``; or AVX-512 BF16 instructions, ``avx512_bf16``, which torch's oneDNN kernels use), float32 elsewhere.
Measured here (docs/benchmarks.md, ``scylla costs --dtype float32,bfloat16``): with those units a forward of 8 new
tokens costs about 1.1-1.2x a 1-token forward in bf16 and about 1.5-2x in fp32, so bf16 verification is memory-bound
as on a GPU, the regime where speculative decoding pays. Which dtype is fastest for plain decoding and for each draft
configuration at each batch size is then a measurement: ``scylla select`` picks it per batch size from one cost table
per dtype (pipeline/select.py).

``SCYLLA_DTYPE`` (float32 / bfloat16) overrides the default for every stage, and ``--dtype`` for one command; the
test suite pins float32 this way so that its exact greedy-identity tests stay exact.
"""

from __future__ import annotations

import functools
import os

import torch

from scylla.errors import InputError

DTYPE_ENV = "SCYLLA_DTYPE"
FLOAT32, BFLOAT16 = "float32", "bfloat16"
NAMES = (FLOAT32, BFLOAT16, "float16")


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_capability(flags: frozenset[str] | set[str] | None = None) -> str:
    """What this CPU offers for matrix work, as records and cost tables store it: ``AMX-BF16``, ``AVX512-BF16``, or
    torch's own capability name (``AVX512``, ``AVX2``, ...) where it has no bf16 units. ``flags``: /proc/cpuinfo's."""
    flags = _cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "AMX-BF16"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return str(torch.backends.cpu.get_cpu_capability())


def has_bf16_units(capability: str | None = None) -> bool:
    """Whether a CPU of this capability (default: this one's) has bf16 matrix units."""
    return (capability or cpu_capability()).endswith("-BF16")


def default_dtype(device: str | torch.device = "cpu", capability: str | None = None) -> str:
    """The dtype a stage runs in unless told otherwise: $SCYLLA_DTYPE if set; bfloat16 on CUDA and on CPUs with bf16
    units (``capability``: default this CPU's); float32 on other CPUs."""
    pinned = os.environ.get(DTYPE_ENV, "")
    if pinned:
        return dtype_name(resolve_dtype(pinned, device))
    if torch.device(device).type == "cuda" or has_bf16_units(capability):
        return BFLOAT16
    return FLOAT32


def plain_dtypes(device: str | torch.device = "cpu", capability: str | None = None) -> list[str]:
    """The dtypes plain decoding is timed in as the baseline of a speed-up (the faster one counts, so that a dtype
    never wins by slowing the baseline): float32 and bfloat16 on a CPU with bf16 units, else the default only (also
    when $SCYLLA_DTYPE pins one)."""
    if os.environ.get(DTYPE_ENV) or torch.device(device).type != "cpu" or not has_bf16_units(capability):
        return [default_dtype(device, capability)]
    return [FLOAT32, BFLOAT16]


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    """A dtype name (or None: ``default_dtype(device)``) as a torch dtype; one InputError line for an unknown one."""
    if dtype is None or dtype == "":
        dtype = default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if str(dtype) not in NAMES or not isinstance(value, torch.dtype):
        raise InputError(f"unknown dtype {dtype!r}: use {', '.join(NAMES)}")
    return value


def dtype_name(dtype: str | torch.dtype | None, device: str | torch.device = "cpu") -> str:
    """``torch.bfloat16`` / "bfloat16" / None -> "bfloat16" (None: the default for ``device``)."""
    return str(resolve_dtype(dtype, device)).removeprefix("torch.")


def parse_dtypes(text: str | None, device: str | torch.device = "cpu") -> list[str]:
    """A comma-separated list of dtype names (None or "": the default) -> checked names, in order, unique."""
    names = [dtype_name(t.strip(), device) for t in (text or "").split(",") if t.strip()]
    return list(dict.fromkeys(names)) or [default_dtype(device)]
