"""The inference runtime every network shares: placement, precision, weights, conversion, locking.

Precision policy: bf16 autocast is used only where :func:`shared.ml.accel.use_bf16` says the
hardware does it natively *and* the model's bf16 output matches its fp32 output at
>= 50 dB PSNR on a probe image (:func:`precision_for`). Everything else runs fp32. A network
the backend choice put on ONNX Runtime (:mod:`shared.ml.backends`) runs fp32 there.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from shared.ml import accel
from shared.ml.dihedral import VIEWS, averaged_over_views
from shared.ml.tiling import DEFAULT_PIXEL_COST, run_tiled

#: bf16 is accepted only when its output is at least this close to fp32's.
BF16_MIN_PSNR_DB = 50.0


# --------------------------------------------------------------------------- placement


ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def prepare_for_inference(module: ModuleT, device: torch.device) -> ModuleT:
    """eval mode, no grads, channels-last, on `device` (in place; returned for chaining)."""
    module.eval()
    module.requires_grad_(False)
    # Module.to takes memory_format (it moves in place); torch's type stubs leave it out.
    module.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    return module


def tile_fn(
    model: Callable[[torch.Tensor], torch.Tensor], device: torch.device, *, bf16: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap `model` for :func:`shared.ml.tiling.run_tiled`: autocast as decided, fp32 out."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        with accel.autocast_for(device, enabled=bf16):
            return model(batch).float()

    return run


def self_ensemble(
    model: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`model` averaged over the 8 flips/rotations of its input (the "+" of EDSR/RCAN tables).

    Each of the dihedral group's 8 transforms is applied to the batch, the output is mapped
    back by the inverse transform, and the 8 results are averaged: ~0.05–0.1 dB better, 8× the
    time. Only for fully convolutional networks whose input sides the tiler keeps to their
    size multiple: a rotated tile has its sides swapped, so both must satisfy it (they do).
    Extra input channels (a noise-level map, a mask) are transformed with the image.
    """

    def run(batch: torch.Tensor) -> torch.Tensor:
        return averaged_over_views(model, (batch,), len(VIEWS))

    return run


# --------------------------------------------------------------------------- conversion


def numpy_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 H×W or H×W×C (or float in [0, 1]) → 1×C×H×W float32 in [0, 1]."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"expected H×W or H×W×C, got shape {image.shape}")
    if image.dtype == np.uint8:
        array = image.astype(np.float32) / 255.0
    elif np.issubdtype(image.dtype, np.floating):
        array = image.astype(np.float32, copy=False)
    else:
        raise TypeError(f"expected uint8 or float pixels, got {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def tensor_to_numpy(tensor: torch.Tensor, *, in_place: bool = False) -> np.ndarray:
    """1×C×H×W or C×H×W in [0, 1] → uint8 H×W×C (H×W when C = 1), rounded and clipped.

    `in_place` scales an fp32 CPU `tensor` the caller no longer needs in place, so a large
    (super-resolved) result is not copied three times on its way to uint8."""
    if tensor.ndim == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"expected one image, got batch of {tensor.shape[0]}")
        tensor = tensor[0]
    if tensor.ndim != 3:
        raise ValueError(f"expected C×H×W, got shape {tuple(tensor.shape)}")
    scaled = tensor.detach().to("cpu", torch.float32)
    if in_place and scaled.data_ptr() == tensor.data_ptr() and not scaled.is_inference():
        scaled.clamp_(0.0, 1.0).mul_(255.0).round_()
    else:
        scaled = scaled.clamp(0.0, 1.0).mul(255.0).round()
    array = scaled.to(torch.uint8).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(array[:, :, 0] if array.shape[2] == 1 else array)


# --------------------------------------------------------------------------- threads & locking


_cpu_threads = 0  # the process's choice (set_cpu_threads); 0: torch's default
_threads_here = threading.local()  # the count applied in each thread, where one was


def set_cpu_threads(count: int) -> None:
    """Intra-op threads for CPU inference (inter-op can only be set before any parallel work).

    The count holds in the calling thread; `use_cpu_threads_here` applies it in another."""
    global _cpu_threads
    _cpu_threads = max(1, count)
    torch.set_num_threads(_cpu_threads)
    _threads_here.count = _cpu_threads
    # Already fixed once torch has run parallel work; the intra-op setting is what matters.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def use_cpu_threads_here() -> None:
    """Apply `set_cpu_threads`'s count in this thread. OpenMP keeps the count per thread: a
    thread that never set it (a service's inference thread, off its event loop) runs oneDNN's
    convolutions on every core whatever the process chose (measured: 2 cores busy for a 3×3
    conv with RESTORA_THREADS=1, on a 2-core EPYC)."""
    if _cpu_threads and getattr(_threads_here, "count", 0) != _cpu_threads:
        torch.set_num_threads(_cpu_threads)
        _threads_here.count = _cpu_threads


class InferenceGate:
    """Process-wide limit on concurrent inferences (a semaphore that can be resized).

    On a 2-core box one inference already uses every core; letting two run at once only makes
    both slower and doubles peak memory, so the embedded mode holds this around every run.
    """

    def __init__(self, slots: int = 1) -> None:
        self._guard = threading.Lock()
        self._slots = 0
        self._sem = threading.Semaphore(1)
        self._held = threading.local()
        self.configure(slots)

    @property
    def slots(self) -> int:
        return self._slots

    def configure(self, slots: int) -> None:
        """Resize; runs already inside keep the semaphore they entered with."""
        if slots < 1:
            raise ValueError("at least one inference slot is needed")
        with self._guard:
            self._slots = slots
            self._sem = threading.Semaphore(slots)

    def __enter__(self) -> InferenceGate:
        with self._guard:
            sem = self._sem
        sem.acquire()
        stack = getattr(self._held, "stack", None)
        if stack is None:
            stack = self._held.stack = []
        stack.append(sem)
        return self

    def __exit__(self, *exc: object) -> None:
        self._held.stack.pop().release()


# --------------------------------------------------------------------------- precision

_precision_cache: dict[tuple[str, str], bool] = {}
_cache_guard = threading.Lock()


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    """PSNR in dB between two tensors in [0, peak] (inf when identical)."""
    diff = a.detach().double().cpu().clamp(0, peak) - b.detach().double().cpu().clamp(0, peak)
    mse = float(diff.pow(2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak * peak / mse)


def precision_for(
    model: torch.nn.Module,
    device: torch.device,
    probe_input: torch.Tensor,
    *,
    model_id: str | None = None,
    bf16_capable: bool | None = None,
    min_psnr_db: float = BF16_MIN_PSNR_DB,
) -> bool:
    """True when `model` should run under bf16 autocast on `device`.

    Needs native bf16 (`bf16_capable`, default :func:`shared.ml.accel.use_bf16`) and a bf16 output
    within `min_psnr_db` of fp32 on `probe_input`. Decisions are cached per (`model_id`, device);
    without a `model_id` the cache entry lives as long as the model object.
    """
    capable = accel.use_bf16(device) if bf16_capable is None else bf16_capable
    if not capable:
        return False  # not cached: costs nothing, and the flag may be injected differently
    key = (model_id or f"object:{id(model)}", str(device))
    with _cache_guard:
        if key in _precision_cache:
            return _precision_cache[key]
    probe = probe_input.to(device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = model(probe).float()
        with accel.autocast_for(device, enabled=True):
            reduced = model(probe).float()
    decision = psnr(reference, reduced) >= min_psnr_db
    with _cache_guard:
        _precision_cache[key] = decision
    if model_id is None:
        weakref.finalize(model, _precision_cache.pop, key, None)
    return decision


def clear_precision_cache() -> None:
    with _cache_guard:
        _precision_cache.clear()


@functools.cache
def probe_image(channels: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """A deterministic 1×C×size×size probe with edges, gradients and fine texture (made once:
    every job asks; read-only for callers)."""
    gen = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    base = 0.5 * (ramp[None, :] + ramp[:, None]) * (ramp[:, None] > 0.5).float()
    texture = 0.15 * torch.rand(channels, size, size, generator=gen)
    return (0.2 + 0.6 * base + texture).clamp(0, 1)[None]


# --------------------------------------------------------------------------- weights


class WeightsMismatchError(RuntimeError):
    """A weights file does not match the module's state dict."""


def _listed(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def load_safetensors_strict(module: torch.nn.Module, path: str | Path) -> dict[str, str]:
    """Load (fp16) safetensors into `module`, cast to each tensor's dtype; return the metadata.

    Keys and shapes must match exactly; the error lists every missing, unexpected and
    mis-shaped key so a wrong width/depth/scale is obvious.
    """
    target = module.state_dict()
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = dict(handle.metadata() or {})
        stored = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    missing = sorted(set(target) - set(stored))
    unexpected = sorted(set(stored) - set(target))
    misshaped = sorted(
        f"{k} {tuple(stored[k].shape)}≠{tuple(target[k].shape)}"
        for k in set(stored) & set(target)
        if stored[k].shape != target[k].shape
    )
    if missing or unexpected or misshaped:
        parts = [f"{path} does not fit {type(module).__name__}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
        if misshaped:
            parts.append(f"shape mismatches ({len(misshaped)}): {_listed(misshaped)}")
        raise WeightsMismatchError("\n  ".join(parts))
    cast = {k: v.to(target[k].dtype) if v.is_floating_point() else v for k, v in stored.items()}
    module.load_state_dict(cast, strict=True)
    return metadata


def save_safetensors_fp16(
    module: torch.nn.Module, path: str | Path, metadata: Mapping[str, object] | None = None
) -> None:
    """Write the state dict as fp16 safetensors (the shipped format) with string metadata."""
    tensors = {
        k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in module.state_dict().items()
    }
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    save_file(tensors, str(path), metadata=meta)


# --------------------------------------------------------------------------- running a network


@dataclass(frozen=True)
class LoadedNetwork:
    """A network ready for inference, with what the runner needs to know about it."""

    module: torch.nn.Module
    device: torch.device
    weights_id: str  # sha256 of the weights file: precision cache key and job records
    in_channels: int
    scale: int = 1
    multiple: int = 1
    pixel_cost: int = DEFAULT_PIXEL_COST  # tile working memory per input pixel, fp32
    pixel_cost_bf16: int | None = None  # the same under bf16 autocast (None: as fp32)
    # The network's ONNX Runtime session where the backend choice at load took it
    # (shared.ml.backends), called like `module`; None: PyTorch runs the tiles.
    ort: Callable[..., torch.Tensor] | None = None
    pixel_cost_ort: int | None = None  # tile working memory per input pixel on it

    @property
    def backend(self) -> str:
        return "torch" if self.ort is None else "onnxruntime"

    @property
    def net(self) -> Callable[..., torch.Tensor]:
        """What runs a tile, called as the module is: the ONNX Runtime session where it was
        chosen, else the module. Restorers' forward closures call this, never `module`."""
        return self.module if self.ort is None else self.ort

    def cost_per_pixel(self, bf16: bool) -> int:
        """Bytes per input pixel of a tile the tiler budgets for, at the precision it runs."""
        if self.ort is not None:
            return self.pixel_cost_ort or self.pixel_cost
        return self.pixel_cost_bf16 if bf16 and self.pixel_cost_bf16 else self.pixel_cost


def run_network(
    network: LoadedNetwork,
    image: np.ndarray,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    ensemble: bool = False,
    bf16_allowed: bool = True,
    budget_bytes: int | None = None,
) -> np.ndarray:
    """uint8 image in, uint8 image out, through the shared tiler on the network's device.

    `forward` (default: :attr:`LoadedNetwork.net`) runs one batch of tiles. A gray image
    through a colour network is replicated to three channels and the outputs averaged back to
    one; bf16 is used only where it is native and keeps ≥ 50 dB vs fp32.
    `ensemble` averages the network over 8 flips/rotations of every tile (:func:`self_ensemble`).
    """
    use_cpu_threads_here()
    forward = forward or network.net
    tensor = numpy_to_tensor(image)
    gray_through_colour = tensor.shape[1] == 1 and network.in_channels == 3
    if gray_through_colour:
        tensor = tensor.expand(-1, 3, -1, -1).contiguous()
    probe = probe_image(network.in_channels)
    # ONNX Runtime runs fp32 whatever autocast says: no probe, and its own pixel cost.
    bf16 = bf16_allowed and network.ort is None and precision_for(
        forward, network.device, probe, model_id=network.weights_id  # type: ignore[arg-type]
    )
    per_tile = tile_fn(forward, network.device, bf16=bf16)
    output = run_tiled(
        self_ensemble(per_tile) if ensemble else per_tile,
        tensor,
        scale=network.scale,
        multiple=network.multiple,
        pixel_cost=network.cost_per_pixel(bf16),
        device=network.device,
        on_progress=on_progress,
        should_cancel=should_cancel,
        budget_bytes=budget_bytes,
    )
    if gray_through_colour:
        output = output.mean(dim=1, keepdim=True)
    return tensor_to_numpy(output, in_place=True)
