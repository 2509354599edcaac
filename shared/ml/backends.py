"""Which runtime runs a loaded network's tiles: PyTorch, or ONNX Runtime on the network's export.

Neither wins everywhere. `benchmarks/speed.py` found ONNX Runtime ahead of PyTorch on the
MWCNN networks; smoke checks on a 2-core CPU with native bf16 swung with threads and load
(one thread: PyTorch's bf16 ahead on RRDBNet, 0.62× ONNX Runtime's time, and on the gray
MWCNN, 0.84–0.93×; in fp32, as on AVX2-only CPUs or with RESTORA_BF16=false, ONNX Runtime
ahead on both, 1.1–2×). So, as the bf16 policy does, the runtime decides per network by
measurement at load (:func:`choose`):

1. one representative tile (:attr:`Signature.measure_side`) runs through PyTorch (fp32: the
   reference; then at the precision the bf16 policy picks) and through an ONNX Runtime session
   of the same network (``torch.onnx.export``, TorchScript exporter, opset 17, dynamic batch,
   height and width, so one session serves every tile size and the tiler's batches);
2. ONNX Runtime's output must stay within :data:`ORT_MIN_PSNR_DB` of PyTorch fp32, like bf16's;
3. the faster of the two is kept (best of a few interleaved runs each).

The decision is kept on disk, once per weights file, CPU model, thread count and library
versions (:func:`decision_recipe`), as a small JSON file under ``<cache dir>/backend/``; the
export under ``<cache dir>/onnx/``. A later load (another process, a restart) reads it and
measures nothing. Without onnxruntime (it is an optional extra), or where the export fails,
the network runs on PyTorch, after one structured log line. `RESTORA_BACKEND=torch` never
imports onnxruntime; `onnxruntime` takes it wherever it is installed and accurate, unmeasured.

A chosen ONNX Runtime session is wrapped in :class:`OrtNetwork`, called like the module's
forward for the arguments the restorers pass (``network(x)``, MWCNN's ``network(x, level,
guide)``), so a restorer's closure runs either backend unchanged (:attr:`LoadedNetwork.net`).
Only the CPU is measured: on CUDA the network always runs on PyTorch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import structlog
import torch
from torch import nn

from shared.ml import accel
from shared.ml.inference import LoadedNetwork, precision_for, probe_image, psnr, tile_fn

log = structlog.get_logger(__name__)

TORCH = "torch"
ORT = "onnxruntime"
AUTO = "auto"
#: RESTORA_BACKEND's values.
BACKEND_CHOICES = (AUTO, TORCH, ORT)
#: ONNX Runtime's output must be at least this close to PyTorch fp32's (as bf16's must).
ORT_MIN_PSNR_DB = 50.0
OPSET = 17
#: Bump when the exported graph changes: cached exports and decisions are then not reused.
EXPORT_FORMAT = 2
#: Bump when the measurement changes: cached decisions are then made again.
DECISION_FORMAT = 3
#: The side of the example input exports are traced at (batch, height, width stay dynamic).
TRACE_SIDE = 64
#: Timed runs per backend after one warm-up each, interleaved; the best counts (a busy
#: neighbour can only slow a run down, so the minimum is the least disturbed).
MEASURE_ROUNDS = 3


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/restora`, else `~/.cache/restora` (RESTORA_CACHE_DIR overrides it)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "restora"


def import_onnxruntime() -> ModuleType | None:
    """The onnxruntime module, or None where it is missing or broken (an optional extra).

    Anything its import raises counts as missing: a wheel without its shared library raises
    ImportError or OSError, and the service must then still run on PyTorch alone."""
    try:
        import onnxruntime
    except Exception:  # any failure to import means: not available
        return None
    return onnxruntime


@functools.cache
def _log_unavailable() -> None:
    # Once per process: every network of a worker would otherwise repeat it.
    log.warning("backend_fallback", backend=TORCH,
                reason="onnxruntime is not importable (pip install -e '.[onnx]')")


# --------------------------------------------------------------------------- the signature


@dataclass(frozen=True)
class Signature:
    """How the restorers call a network, which is what its export takes as inputs.

    ``network(x)`` (RRDBNet), or ``network(x, level, guide)`` (MWCNN): ``level`` a float per
    call (an input of one value per image, expanded to the constant map inside the graph, as
    the module does), ``guide`` the extra planes a colour-plane MWCNN sees. Inputs are named
    ``input``, ``level``, ``guide`` in that order; the output ``output``.
    """

    channels: int
    level: bool = False
    guide_channels: int = 0
    #: The side of the tile the load-time measurement runs (a multiple of the network's).
    measure_side: int = 128
    #: The level it runs at: any value in the range, the speed does not depend on it.
    measure_level: float = 0.1

    @property
    def takes_extras(self) -> bool:
        return self.level or self.guide_channels > 0

    @property
    def input_names(self) -> list[str]:
        return ["input"] + (["level"] if self.level else []) + (
            ["guide"] if self.guide_channels else [])

    def extras_for(self, x: torch.Tensor) -> tuple[Any, ...]:
        """The arguments after ``x`` of a representative call (the measurement's, the trace's):
        the measurement level, and ``x``'s planes repeated as the guide."""
        if not self.takes_extras:
            return ()
        guide = (x[:, :1].expand(-1, self.guide_channels, -1, -1).contiguous(
            memory_format=torch.channels_last) if self.guide_channels else None)
        return (self.measure_level if self.level else None, guide)

    def recipe(self) -> dict[str, object]:
        """What of the signature shapes the export (part of its cache key)."""
        return {"channels": self.channels, "level": self.level,
                "guide_channels": self.guide_channels}


# --------------------------------------------------------------------------- the ORT network


def _array(tensor: torch.Tensor) -> np.ndarray:
    """fp32 NCHW contiguous on the CPU: what the session takes (a channels-last tile is copied)."""
    return tensor.detach().to("cpu", torch.float32).contiguous().numpy()


def _levels(level: float | torch.Tensor | None, batch: int) -> np.ndarray:
    """One level per image: MWCNN's float, or its (N,) tensor; per-pixel maps are not exported."""
    if isinstance(level, torch.Tensor):
        if level.dim() > 1:
            raise ValueError("the ONNX Runtime network takes one level per image, not a map")
        values = level.detach().to("cpu", torch.float32).reshape(-1).numpy()
        return np.ascontiguousarray(np.broadcast_to(values, (batch,)), dtype=np.float32)
    if level is None:
        raise ValueError("this network takes a degradation level")
    return np.full((batch,), float(level), dtype=np.float32)


class OrtNetwork:
    """An ONNX Runtime session called like the module it was exported from.

    ``network(x[, level[, guide]])`` → fp32 NCHW tensor on the CPU, as the module's forward
    for the arguments the restorers pass. Autocast does not reach it: it always runs fp32.
    """

    def __init__(self, session: Any, signature: Signature) -> None:
        self.session = session
        self.signature = signature

    def __call__(self, x: torch.Tensor, level: float | torch.Tensor | None = None,
                 guide: torch.Tensor | None = None) -> torch.Tensor:
        feeds = {"input": _array(x)}
        if self.signature.level:
            feeds["level"] = _levels(level, x.shape[0])
        if self.signature.guide_channels:
            if guide is None:
                raise ValueError(f"this network takes {self.signature.guide_channels} guide "
                                 "channels")
            feeds["guide"] = _array(guide)
        (output,) = self.session.run(["output"], feeds)
        return torch.from_numpy(output)


# --------------------------------------------------------------------------- export


class _Exported(nn.Module):
    """The module with the signature's inputs as positional tensors (what the trace needs)."""

    def __init__(self, module: nn.Module, signature: Signature) -> None:
        super().__init__()
        self.module, self.signature = module, signature

    def forward(self, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        if not self.signature.takes_extras:
            return self.module(x)
        named = dict(zip(self.signature.input_names[1:], inputs, strict=True))
        return self.module(x, named.get("level"), named.get("guide"))


def _example_inputs(signature: Signature) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    side = TRACE_SIDE
    inputs = [torch.rand(1, signature.channels, side, side, generator=gen)]
    if signature.level:
        inputs.append(torch.tensor([signature.measure_level]))
    if signature.guide_channels:
        inputs.append(torch.rand(1, signature.guide_channels, side, side, generator=gen))
    return tuple(inputs)


def export_onnx(module: nn.Module, signature: Signature) -> bytes:
    """`module` as an ONNX model (bytes), every input's batch, height and width dynamic."""
    # A contiguous fp32 copy: the loaded module is channels-last and may be in use elsewhere.
    graph = _Exported(copy.deepcopy(module).float(), signature).eval().requires_grad_(False)
    graph = graph.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    dynamic = {name: {0: "batch", 2: "height", 3: "width"} for name in signature.input_names}
    if signature.level:
        dynamic["level"] = {0: "batch"}
    dynamic["output"] = {0: "batch", 2: "out_height", 3: "out_width"}
    # Through a file of its own (the exporter takes a path): the cache may be read-only.
    with tempfile.TemporaryDirectory(prefix="restora-onnx-") as folder:
        path = Path(folder) / "network.onnx"
        # The TorchScript exporter warns of its own deprecation and of every shape check it
        # traces as a constant; the accuracy check against PyTorch fp32 validates the export.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, _example_inputs(signature), str(path),
                              input_names=signature.input_names, output_names=["output"],
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        return path.read_bytes()


def _stem(weights_id: str, recipe: Mapping[str, object]) -> str:
    """`<first 16 characters of the weights id>-<digest of the recipe>`: a new weights file,
    signature or library version gets a new name, so a cached file is never stale."""
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return f"{re.sub(r'[^0-9A-Za-z]', '_', weights_id[:16])}-{digest}"


def export_recipe(network: LoadedNetwork, signature: Signature) -> dict[str, object]:
    return {"weights_id": network.weights_id, "module": type(network.module).__name__,
            "signature": signature.recipe(), "torch": torch.__version__, "opset": OPSET,
            "export_format": EXPORT_FORMAT}


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)  # a crash mid-write never leaves a truncated file under the name
    finally:
        tmp.unlink(missing_ok=True)


def cached_export(network: LoadedNetwork, signature: Signature, cache_dir: Path) -> bytes:
    """The network's ONNX model: read from `cache_dir/onnx`, else exported and kept there
    (where the directory cannot be written, the export is used from memory)."""
    stem = _stem(network.weights_id, export_recipe(network, signature))
    path = cache_dir / "onnx" / f"{stem}.onnx"
    with contextlib.suppress(OSError):
        return path.read_bytes()
    model = export_onnx(network.module, signature)
    try:
        _write_atomically(path, model)
    except OSError as err:
        log.warning("backend_cache_unwritable", path=str(path), error=str(err))
    return model


def open_session(ort: ModuleType, model: bytes, threads: int) -> Any:
    """A CPU session with PyTorch's intra-op thread count, so both are measured alike."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No arena: it keeps the peak of the largest tile for the process's lifetime, one per
    # session, where PyTorch hands memory back after each tile; the tiler's budget assumes it
    # is handed back. (Peak per tile pixel measured the same with and without it.)
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False  # planned for one input shape; tiles vary
    options.log_severity_level = 3  # errors only: it warns about unused initialisers
    # No spinning: its threads otherwise busy-wait after each run, on the cores the next
    # PyTorch tile, the PNG encoding and the other services need. Interleaved with it, the JPEG
    # network's PyTorch tile took 0.073 s instead of 0.042, which made the backend choice pick
    # ONNX Runtime (0.064 s either way, spinning or not; 512², 2-core AMD EPYC).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Decision:
    """Which backend runs a network, and what the measurement saw (kept as JSON)."""

    backend: str
    reason: str
    torch_s: float | None = None  # best seconds per measurement tile, PyTorch as it runs
    ort_s: float | None = None  # the same on ONNX Runtime
    psnr_db: float | None = None  # ONNX Runtime's output against PyTorch fp32
    bf16: bool = False  # PyTorch ran under bf16 autocast (the precision policy's choice)
    side: int = 0  # the measurement tile's side

    def as_json(self) -> dict[str, object]:
        values = dataclasses.asdict(self)
        if self.psnr_db is not None and math.isinf(self.psnr_db):
            values["psnr_db"] = "inf"  # strict JSON has no infinity
        return values

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Decision:
        values = {f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw}
        if values.get("psnr_db") == "inf":
            values["psnr_db"] = math.inf
        decision = cls(**values)
        if decision.backend not in (TORCH, ORT):
            raise ValueError(f"unknown backend {decision.backend!r}")
        return decision


def decision_recipe(network: LoadedNetwork, signature: Signature, ort: ModuleType,
                    *, threads: int, bf16_allowed: bool) -> dict[str, object]:
    """Everything the decision depends on: the export's recipe, the CPU, the threads, the
    runtimes' versions, whether bf16 is allowed, how it is measured."""
    return {**export_recipe(network, signature), "device": accel.device_name(network.device),
            "threads": threads, "onnxruntime": getattr(ort, "__version__", "?"),
            "bf16_allowed": bf16_allowed, "side": signature.measure_side,
            "decision_format": DECISION_FORMAT}


def decision_path(cache_dir: Path, network: LoadedNetwork, recipe: Mapping[str, object]) -> Path:
    return cache_dir / "backend" / f"{_stem(network.weights_id, recipe)}.json"


def read_decision(path: Path) -> Decision | None:
    """The cached decision at `path`; None where there is none or it cannot be read."""
    try:
        return Decision.from_json(json.loads(path.read_text())["decision"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_decision(path: Path, decision: Decision, recipe: Mapping[str, object]) -> None:
    """Keep `decision` (with its recipe, for a reader) at `path`; a read-only cache only logs:
    the decision then holds for this process and is measured again at the next start."""
    text = json.dumps({"decision": decision.as_json(), "recipe": dict(recipe)}, indent=1)
    try:
        _write_atomically(path, text.encode())
    except OSError as err:
        log.warning("backend_cache_unwritable", path=str(path), error=str(err))


def race(candidates: Mapping[str, Callable[[], object]],
         rounds: int = MEASURE_ROUNDS) -> dict[str, float]:
    """Best seconds of each candidate: one warm-up each, then `rounds` interleaved runs (so a
    burst of load elsewhere slows both, not one)."""
    for run in candidates.values():
        run()
    best = dict.fromkeys(candidates, math.inf)
    for _ in range(rounds):
        for name, run in candidates.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def measure(network: LoadedNetwork, signature: Signature, ort_net: OrtNetwork, *,
            bf16_allowed: bool, timed: bool = True) -> Decision:
    """PyTorch against ONNX Runtime on one representative tile: ONNX Runtime only where its
    output keeps ≥ ORT_MIN_PSNR_DB of PyTorch fp32's and (when `timed`) it is the faster."""
    side = signature.measure_side
    tile = probe_image(signature.channels, side).contiguous(memory_format=torch.channels_last)
    extras = signature.extras_for(tile)

    def module_call(x: torch.Tensor) -> torch.Tensor:
        return network.module(x, *signature.extras_for(x))

    with torch.inference_mode():
        reference = tile_fn(module_call, network.device, bf16=False)(tile)
        accuracy = psnr(reference, ort_net(tile, *extras))
    if accuracy < ORT_MIN_PSNR_DB:
        return Decision(TORCH, "onnxruntime below 50 dB of fp32", psnr_db=accuracy, side=side)
    if not timed:
        return Decision(ORT, "RESTORA_BACKEND=onnxruntime", psnr_db=accuracy, side=side)
    # The precision PyTorch would run at: the bf16 policy's own probe and cache key.
    bf16 = bf16_allowed and precision_for(
        module_call, network.device, probe_image(signature.channels),  # type: ignore[arg-type]
        model_id=network.weights_id)
    torch_tile = tile_fn(module_call, network.device, bf16=bf16)
    with torch.inference_mode():
        best = race({TORCH: lambda: torch_tile(tile), ORT: lambda: ort_net(tile, *extras)})
    backend = ORT if best[ORT] < best[TORCH] else TORCH
    return Decision(backend, "faster" if backend == ORT else "slower", best[TORCH], best[ORT],
                    accuracy, bf16, side)


# --------------------------------------------------------------------------- choosing


def choose(network: LoadedNetwork, signature: Signature, *, mode: str, cache_dir: Path,
           bf16_allowed: bool, ort_pixel_cost: int) -> LoadedNetwork:
    """`network` as it should run: unchanged (PyTorch), or with its ONNX Runtime session.

    `mode` is RESTORA_BACKEND; `ort_pixel_cost` the tile memory per input pixel the ONNX
    Runtime session needs (the tiler budgets with it when the session is chosen)."""
    if mode not in BACKEND_CHOICES:
        raise ValueError(f"RESTORA_BACKEND={mode!r}: use one of {', '.join(BACKEND_CHOICES)}")
    if mode == TORCH or network.device.type != "cpu":
        return network  # only the CPU provider is used: CUDA stays on PyTorch
    ort = import_onnxruntime()
    if ort is None:
        _log_unavailable()
        return network
    threads = torch.get_num_threads()
    recipe = decision_recipe(network, signature, ort, threads=threads, bf16_allowed=bf16_allowed)
    path = decision_path(cache_dir, network, recipe)
    cached = read_decision(path) if mode == AUTO else None
    if cached is not None and cached.backend == TORCH:
        _log_choice(network, cached, cached=True)
        return network  # no export, no session: the earlier measurement said PyTorch
    try:
        ort_net = OrtNetwork(open_session(ort, cached_export(network, signature, cache_dir),
                                          threads), signature)
        decision = cached or measure(network, signature, ort_net, bf16_allowed=bf16_allowed,
                                     timed=mode == AUTO)
    except Exception as err:  # a failed export or session must not stop a load
        log.warning("backend_fallback", backend=TORCH, weights=network.weights_id[:16],
                    reason=f"onnxruntime failed: {type(err).__name__}: {err}")
        return network
    if cached is None and mode == AUTO:
        write_decision(path, decision, recipe)
    _log_choice(network, decision, cached=cached is not None)
    if decision.backend == TORCH:
        return network
    return dataclasses.replace(network, ort=ort_net, pixel_cost_ort=ort_pixel_cost)


def _log_choice(network: LoadedNetwork, decision: Decision, *, cached: bool) -> None:
    log.info("backend_chosen", weights=network.weights_id[:16], cached=cached,
             **decision.as_json())
