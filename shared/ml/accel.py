"""Where tensors run and in which precision: one place decides, everyone asks.

bf16 autocast roughly doubles convolution speed on CPUs with native bf16 units
(AVX512-BF16 or AMX) and is many times *slower* on AVX2-only CPUs, so it is only
ever enabled after checking /proc/cpuinfo.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Iterator
from pathlib import Path

import torch

_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_has_native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in _NATIVE_BF16_FLAGS)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{cpu_model()}"


def use_bf16(device: torch.device) -> bool:
    """bf16 where the hardware does it natively: CUDA (Ampere+) or a CPU with bf16 units."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


@contextlib.contextmanager
def autocast_for(device: torch.device, enabled: bool | None = None) -> Iterator[None]:
    """bf16 autocast on `device` when it pays off (or when `enabled` forces a choice)."""
    on = use_bf16(device) if enabled is None else enabled
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=on):
        yield


def full_precision(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` in fp32 even under autocast, its output then in autocast's dtype.

    For a network's first layer: bf16 keeps 8 significant bits, so an 8-bit image rounded to
    it loses up to half a grey level before any weight sees it. That rounding alone cost
    Real-ESRGAN x4plus 3 dB of its bf16 output's PSNR against fp32 (49.5 → 52.5 on a 128²
    photo-like input), at the price of one cheap conv in fp32.
    """
    kind = x.device.type
    if not torch.is_autocast_enabled(kind):
        return layer(x)
    with torch.autocast(device_type=kind, enabled=False):
        return layer(x.float()).to(torch.get_autocast_dtype(kind))


def describe_accelerator(device: torch.device) -> dict[str, str | bool | list[str]]:
    """What training logs and provenance files record about the machine."""
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "native_bf16": cpu_has_native_bf16(),
        "bf16_used": use_bf16(device),
        "cpu_flags_of_note": sorted(
            f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "sse4"))
        ),
    }
