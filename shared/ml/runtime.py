"""The model runtime: built once from settings, handed to every service that runs networks.

It owns what used to be scattered module-level state: the weights directory, the device (the
one place that chooses it), the precision policy, the backend policy (PyTorch or ONNX Runtime,
:mod:`shared.ml.backends`) and its cache directory, the CPU threads, the tile memory budget,
the inference gate and the cache of loaded networks. Restorers receive it as their first argument
(:mod:`shared.ml.registry`); tests build one around a temporary weights directory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from shared.ml import accel, backends
from shared.ml.hashing import cached_file_sha256
from shared.ml.inference import (
    InferenceGate,
    LoadedNetwork,
    precision_for,
    run_network,
    set_cpu_threads,
)
from shared.ml.registry import SHIPPED_WEIGHTS_DIR

DEVICE_CHOICES = ("auto", "cpu", "cuda")

T = TypeVar("T")


def resolve_device(
    requested: str, cuda_available: Callable[[], bool] | None = None
) -> torch.device:
    """The device for RESTORA_DEVICE: `auto` takes CUDA when present, `cpu` always the CPU.

    The one place that chooses a device; `cuda_available` defaults to torch's own check.
    """
    cuda_available = cuda_available or torch.cuda.is_available
    if requested not in DEVICE_CHOICES:
        raise ValueError(f"RESTORA_DEVICE={requested!r}: use one of {', '.join(DEVICE_CHOICES)}")
    if requested == "cpu":
        return torch.device("cpu")
    if cuda_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise ValueError("RESTORA_DEVICE=cuda, but no CUDA device is available")
    return torch.device("cpu")


class ModelRuntime:
    """Where and how networks run, and the networks already loaded."""

    def __init__(
        self,
        weights_dir: Path = SHIPPED_WEIGHTS_DIR,
        device: torch.device | None = None,
        *,
        threads: int = 0,
        bf16: bool = True,
        tile_budget_mb: int = 0,
        gate: InferenceGate | None = None,
        weights_overrides: Mapping[str, Path] | None = None,
        backend: str = backends.TORCH,
        cache_dir: Path | None = None,
    ) -> None:
        self.weights_dir = Path(weights_dir)
        self.device = device if device is not None else resolve_device("auto")
        self.threads = threads
        # bf16 is allowed at all (the hardware and a per-network accuracy probe still decide).
        self.bf16 = bf16
        self.tile_budget_bytes = tile_budget_mb * 1024 * 1024 if tile_budget_mb > 0 else None
        # One inference at a time by default: on a few cores, two at once only slow both.
        self.gate = gate or InferenceGate(1)
        # A weights file name → the operator's file used instead (e.g. an official checkpoint).
        self.weights_overrides = dict(weights_overrides or {})
        # RESTORA_BACKEND. PyTorch unless asked: tests, benchmarks and tools that build a runtime
        # get the plain path; the service's settings ask for `auto`.
        if backend not in backends.BACKEND_CHOICES:
            raise ValueError(f"RESTORA_BACKEND={backend!r}: use one of "
                             f"{', '.join(backends.BACKEND_CHOICES)}")
        self.backend = backend
        # Exports and backend decisions, kept across restarts (RESTORA_CACHE_DIR).
        self.cache_dir = Path(cache_dir) if cache_dir is not None else backends.default_cache_dir()
        self._networks: dict[tuple[Hashable, ...], Any] = {}
        self._load_guard = threading.Lock()
        if threads > 0:
            set_cpu_threads(threads)

    @classmethod
    def create(
        cls,
        weights_dir: Path,
        device: str = "auto",
        **kwargs: Any,
    ) -> ModelRuntime:
        """From settings values: `device` is RESTORA_DEVICE's text (auto, cpu, cuda)."""
        return cls(weights_dir, resolve_device(device), **kwargs)

    @property
    def device_name(self) -> str:
        return accel.device_name(self.device)

    # ------------------------------------------------------------------ weights

    def weights_path(self, name: str) -> Path:
        """Where the weights file `name` is read from (an operator's override wins)."""
        return self.weights_overrides.get(name, self.weights_dir / name)

    def is_overridden(self, name: str) -> bool:
        return name in self.weights_overrides

    def has_weights(self, names: Sequence[str]) -> bool:
        return all(self.weights_path(name).is_file() for name in names)

    def weights_sha256(self, name: str) -> str | None:
        path = self.weights_path(name)
        return cached_file_sha256(path) if path.is_file() else None

    # ------------------------------------------------------------------ loading

    def load(self, key: Hashable, files: Sequence[Path], build: Callable[[], T]) -> T:
        """`build()` once per (`key`, files' versions): a replaced weights file is reloaded."""
        versions = tuple((str(p.resolve()), p.stat().st_mtime_ns) for p in files)
        cache_key = (key, versions, str(self.device))
        with self._load_guard:
            if cache_key not in self._networks:
                # Older versions of the same network are dropped with their memory.
                for stale in [k for k in self._networks if k[0] == key]:
                    del self._networks[stale]
                self._networks[cache_key] = build()
            return self._networks[cache_key]

    def choose_backend(self, network: LoadedNetwork, signature: backends.Signature,
                       *, ort_pixel_cost: int) -> LoadedNetwork:
        """`network` on the backend this runtime's policy picks for it (call it while loading:
        `auto` measures once per weights file and CPU, then reads the decision from disk)."""
        return backends.choose(network, signature, mode=self.backend, cache_dir=self.cache_dir,
                               bf16_allowed=self.bf16, ort_pixel_cost=ort_pixel_cost)

    # ------------------------------------------------------------------ running

    def uses_bf16(self, forward: Callable[[torch.Tensor], torch.Tensor], probe: torch.Tensor,
                  model_id: str) -> bool:
        """The precision policy: bf16 only where allowed, native and accurate (≥ 50 dB)."""
        return self.bf16 and precision_for(forward, self.device, probe,  # type: ignore[arg-type]
                                           model_id=model_id)

    def run(
        self,
        network: LoadedNetwork,
        image: np.ndarray,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        on_progress: Callable[[float], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        ensemble: bool = False,
    ) -> np.ndarray:
        """uint8 image in, uint8 image out, tiled within this runtime's memory budget."""
        return run_network(
            network,
            image,
            forward,
            on_progress=on_progress,
            should_cancel=should_cancel,
            ensemble=ensemble,
            bf16_allowed=self.bf16,
            budget_bytes=self.tile_budget_bytes,
        )
