"""The contenders of `benchmarks/speed.py`, each served by a worker process of its own.

A contender is one way to run one network: eager fp32 PyTorch, ONNX Runtime, ncnn, Restora's
service path (the registry) or the task's classic method. Each runs in its own process
(`python -m benchmarks.speed_contenders`, started by :class:`Worker`) so that its peak RSS is
its own: the process loads once, stays warm and is fed the benchmark's rounds in turn. Only
the PyTorch contenders import torch; ONNX Runtime's and ncnn's processes hold their runtime
alone, as they would in a user's program.

Eager, ONNX Runtime and ncnn share one NumPy pipeline around the network (uint8 → float32
NCHW, padding, rounding back; DeepFill's Telea prefill, window and compositing), so their
outputs differ only by the runtime. The seconds reported are measured inside the worker
around that whole call (no transfer between processes), the peak RSS is the kernel's
high-water mark (VmHWM), reset at each new image size where the kernel allows it.
"""

from __future__ import annotations

import os
import pickle
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

#: Every contender, in the table's order.
CONTENDERS: tuple[str, ...] = ("eager", "onnxruntime", "ncnn", "restora", "classic")
LABELS = {
    "eager": "eager fp32 PyTorch (whole image)",
    "onnxruntime": "ONNX Runtime CPU",
    "ncnn": "ncnn CPU (fp32)",
    "restora": "Restora (registry: tiled, channels-last)",
    "classic": "classic",
}
#: The graphs eager, ONNX Runtime and ncnn can run (see benchmarks.speed_graphs).
GRAPHS = ("mwcnn", "mwcnn-planes", "rrdbnet", "deepfill")

#: float32 NCHW inputs (the image, then DeepFill's mask) → float32 NCHW output.
NetFn = Callable[[list[np.ndarray]], np.ndarray]
#: uint8 image and the inpainting mask (None for other tasks) → uint8 output.
Runner = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


@dataclass(frozen=True)
class Network:
    """One network of the benchmark: what Restora's path runs, and the same graph for the rest."""

    key: str  # e.g. "rrdbnet-x4plus": names its export in the cache
    label: str
    task: str
    model: str  # the registry's model name (Restora's row)
    graph: str  # one of GRAPHS
    weights: Path  # the file the graph is built from
    scale: int = 1
    multiple: int = 1
    levels: tuple[float, ...] = ()  # MWCNN's level (per plane for "mwcnn-planes")
    chroma: Path | None = None  # "mwcnn-planes": the cascade's chroma network, where installed
    prefill: bool = False  # DeepFill: the hole is Telea-filled before the network
    max_side: int | None = None  # DeepFill: the longest window side it runs at
    options: dict[str, Any] = field(default_factory=dict)  # the registry job's options
    ncnn: str | None = None  # how its ncnn files come: "x4plus" (the package's), "written"


@dataclass(frozen=True)
class Spec:
    """What one worker serves."""

    contender: str
    network: Network
    threads: int
    weights_dir: Path
    files: tuple[Path, ...] = ()  # the ONNX file, or ncnn's .param and .bin
    cache_dir: Path | None = None  # Restora's runtime: its exports and backend decisions
    # CPU seconds of the worker instead of wall-clock ones: with one thread, what the work
    # costs even on a machine busy with other jobs (how the registry's costs were set)
    cpu_time: bool = False

    def clock(self) -> float:
        return time.process_time() if self.cpu_time else time.perf_counter()


# --------------------------------------------------------------------------- peak RSS


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux ≥ 4.0); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """The peak RSS since the last reset (VmHWM), else since the start (ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------- the pipeline


def pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    """NCHW padded bottom/right to `multiple`, as :func:`shared.ml.tiling.pad_to_multiple`
    pads every network input: reflect where the side allows it, else replicate."""
    for axis in (2, 3):
        side = x.shape[axis]
        pad = -side % multiple
        if pad:
            widths = [(0, 0)] * 4
            widths[axis] = (0, pad)
            x = np.pad(x, widths, mode="reflect" if pad < side else "edge")
    return x


def to_nchw(image: np.ndarray) -> np.ndarray:
    """uint8 H×W×C → float32 1×C×H×W in [0, 1]."""
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def to_uint8(output: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 1×C×H'×W' → uint8 height×width×C, cropped, clipped and rounded like the service."""
    cropped = output[0, :, :height, :width]
    return np.rint(np.clip(cropped, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)


def image_pipeline(net: NetFn, network: Network) -> Runner:
    """A whole-image network (MWCNN, RRDBNet): one call on the padded image."""

    def run(image: np.ndarray, _mask: np.ndarray | None) -> np.ndarray:
        height, width = image.shape[:2]
        out = net([pad_to_multiple(to_nchw(image), network.multiple)])
        return to_uint8(out, height * network.scale, width * network.scale)

    return run


def inpaint_pipeline(net: NetFn, network: Network) -> Runner:
    """DeepFill as :func:`shared.ml.restorers.deepfill.inpaint` runs it (no ensemble): a window
    around the mask, the Telea prefill, one call of the generator, the feathered paste-back."""
    from shared.ml.imaging import composite_masked
    from shared.ml.inpaint_window import FEATHER_PX, fill_through_window

    def fill(window: np.ndarray, hole: np.ndarray) -> np.ndarray:
        x = pad_to_multiple(to_nchw(window), network.multiple)
        m = pad_to_multiple(hole.astype(np.float32)[None, None], network.multiple)
        return to_uint8(net([x, m]), *hole.shape)

    def run(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        assert mask is not None, "inpainting needs a mask"
        filled = fill_through_window(image, mask, fill, max_side=network.max_side,
                                     feather=FEATHER_PX, prefill=network.prefill)
        return composite_masked(image, filled, mask)

    return run


def pipeline(net: NetFn, network: Network) -> Runner:
    return (inpaint_pipeline if network.graph == "deepfill" else image_pipeline)(net, network)


# --------------------------------------------------------------------------- the runtimes


def eager_net(network: Network, threads: int) -> NetFn:
    import torch

    from benchmarks.speed_graphs import build_graph
    from shared.ml.inference import set_cpu_threads

    set_cpu_threads(threads)
    module = build_graph(network)

    def run(inputs: list[np.ndarray]) -> np.ndarray:
        # What the papers' test scripts do: NCHW fp32 under no_grad, the whole input at once.
        with torch.no_grad():
            return module(*(torch.from_numpy(x) for x in inputs)).numpy()

    return run


def onnxruntime_net(path: Path, threads: int) -> NetFn:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(inputs: list[np.ndarray]) -> np.ndarray:
        return session.run(None, dict(zip(names, inputs, strict=True)))[0]

    return run


def ncnn_net(param: Path, weights: Path, threads: int) -> NetFn:
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    # fp32 throughout: ncnn's fp16/bf16 storage would cost more than the ≥ 50 dB the table
    # asks of a contender against eager fp32 (its default on CPUs that have them).
    for option in ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed",
                   "use_bf16_storage", "use_bf16_packed"):
        if hasattr(net.opt, option):
            setattr(net.opt, option, False)
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise RuntimeError(f"ncnn cannot load {param} / {weights}")

    def run(inputs: list[np.ndarray]) -> np.ndarray:
        source = ncnn.Mat(np.ascontiguousarray(inputs[0][0]))  # alive through extract()
        extractor = net.create_extractor()
        extractor.input("data", source)
        status, out = extractor.extract("output")
        if status != 0:
            raise RuntimeError(f"ncnn extract failed ({status})")
        return np.array(out, copy=True)[None]

    return run


def registry_runner(spec: Spec, model: str) -> Runner:
    """`model` of the network's task through the registry, as a service worker runs it: on
    the backend the service's RESTORA_BACKEND (default `auto`) picks, measured at load, and
    with freed memory kept for reuse where RESTORA_REUSE_MEMORY (default true) says so."""
    import torch

    from shared.ml import registry
    from shared.ml.allocator import keep_freed_memory
    from shared.ml.restorers.common import RestoreJob
    from shared.ml.runtime import ModelRuntime
    from shared.platform.config import ModelRuntimeSettings, load_settings

    settings = load_settings(ModelRuntimeSettings)
    if settings.reuse_memory:  # as the service's bootstrap does before it loads a network
        keep_freed_memory()
    runtime = ModelRuntime(spec.weights_dir, torch.device("cpu"), threads=spec.threads,
                           backend=settings.backend, cache_dir=spec.cache_dir)
    task, options = spec.network.task, spec.network.options

    def run(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        return registry.restore(runtime, task, model, RestoreJob(image, mask, **options)).pixels

    return run


def build_runner(spec: Spec) -> Runner:
    network = spec.network
    if spec.contender == "restora":
        return registry_runner(spec, network.model)
    if spec.contender == "classic":
        return registry_runner(spec, "classic")
    if spec.contender == "eager":
        return pipeline(eager_net(network, spec.threads), network)
    if spec.contender == "onnxruntime":
        return pipeline(onnxruntime_net(spec.files[0], spec.threads), network)
    if spec.contender == "ncnn":
        return pipeline(ncnn_net(spec.files[0], spec.files[1], spec.threads), network)
    raise ValueError(f"unknown contender {spec.contender!r}")


# --------------------------------------------------------------------------- the protocol


def _send(stream: IO[bytes], message: object) -> None:
    pickle.dump(message, stream, protocol=pickle.HIGHEST_PROTOCOL)
    stream.flush()


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The worker's loop: a Spec, then ("run", image, mask, keep_output) / ("reset_peak",) /
    ("stop",) messages, each answered with ("ok", ...) or ("error", traceback)."""
    spec: Spec = pickle.load(requests)
    try:
        started = time.perf_counter()
        runner = build_runner(spec)
        _send(replies, ("ok", time.perf_counter() - started, peak_rss_bytes()))
    except Exception:
        _send(replies, ("error", traceback.format_exc()))
        return
    while True:
        try:
            message = pickle.load(requests)
        except EOFError:
            return  # the parent is gone (interrupted): nothing left to serve
        try:
            if message[0] == "stop":
                return
            if message[0] == "reset_peak":
                _send(replies, ("ok", reset_peak_rss()))
                continue
            _, image, mask, keep = message
            started = spec.clock()
            output = runner(image, mask)
            seconds = spec.clock() - started
            _send(replies, ("ok", seconds, peak_rss_bytes(), output if keep else None,
                            output.shape))
        except Exception:
            _send(replies, ("error", traceback.format_exc()))


class WorkerError(RuntimeError):
    """A contender failed in its worker; the message is its traceback's last line."""


@dataclass(frozen=True)
class Call:
    seconds: float
    peak_rss: int
    output: np.ndarray | None
    output_shape: tuple[int, ...]


def thread_env(threads: int) -> dict[str, str]:
    """The environment of a worker: every OpenMP/BLAS pool at the benchmark's thread count."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    return env


class Worker:
    """The parent's end of one contender's process."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.speed_contenders"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=thread_env(spec.threads),
            cwd=Path(__file__).resolve().parents[1],
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._requests, self._replies = self._process.stdin, self._process.stdout
        try:
            self.load_seconds, self.loaded_rss = self._ask(spec)
        except WorkerError:
            self.close()
            raise

    def _ask(self, message: object) -> tuple[Any, ...]:
        try:
            _send(self._requests, message)
            reply = pickle.load(self._replies)
        except (OSError, EOFError, pickle.UnpicklingError) as err:
            raise WorkerError(f"the {self.spec.contender} worker died ({err})") from None
        if reply[0] == "error":
            last = reply[1].strip().splitlines()[-1]
            print(reply[1], file=sys.stderr)
            raise WorkerError(last)
        return tuple(reply[1:])

    def reset_peak(self) -> bool:
        return bool(self._ask(("reset_peak",))[0])

    def run(self, image: np.ndarray, mask: np.ndarray | None, keep: bool = False) -> Call:
        seconds, peak, output, shape = self._ask(("run", image, mask, keep))
        return Call(seconds, peak, output, tuple(shape))

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                _send(self._requests, ("stop",))
                self._process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        for stream in (self._requests, self._replies):
            stream.close()


def main() -> int:
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
