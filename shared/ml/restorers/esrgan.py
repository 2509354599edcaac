"""ESRGAN (RRDBNet) restorer: shipped PSNR/GAN weights, or an operator's official checkpoint.

`strength` is the paper's network interpolation between the PSNR-oriented and the GAN
weights (0 = PSNR, 1 = GAN); the interpolated network is cached per strength step.
"""

from __future__ import annotations

import numpy as np

from shared.ml.backends import Signature
from shared.ml.inference import LoadedNetwork, prepare_for_inference
from shared.ml.models.esrgan import RRDBNet, interpolate_state_dicts, load_rrdbnet
from shared.ml.restorers.common import Restored, RestoreJob, require_scale
from shared.ml.runtime import ModelRuntime

PSNR_WEIGHTS = "esrgan-psnr.safetensors"
GAN_WEIGHTS = "esrgan-gan.safetensors"
# Peak working memory per input pixel of a tile at ×4: 1.25× the largest peak-RSS growth that
# benchmarks/tile_memory.py measured for the shipped 32×4 network (2-core AMD EPYC, torch 2.13,
# 128² and 256² tiles): 8.20 / 6.47 KiB fp32, 3.82 / 3.00 KiB bf16. An operator's official
# 64×23 checkpoint costs more: it gets Real-ESRGAN's measured x4plus cost (same architecture).
RRDBNET_PIXEL_COST = 10 * 1024
RRDBNET_PIXEL_COST_BF16 = 5 * 1024
# The paper's 64×23 (Real-ESRGAN x4plus, official ESRGAN checkpoints), measured the same way:
# 13.16 / 11.94 KiB fp32, 6.91 / 6.59 KiB bf16; 1.25× the largest, rounded up.
X4PLUS_PIXEL_COST = 17 * 1024
X4PLUS_PIXEL_COST_BF16 = 9 * 1024
# The same on ONNX Runtime (no arena, see shared.ml.backends.open_session), measured the same
# way for the export (peak-RSS growth over one tile, onnxruntime 1.32): shipped 32×4 8.59 /
# 6.78 KiB at 128² / 256²; 64×23 14.04 / 12.63 KiB (13.89 at 192²; 15.82 at 256² with the
# arena on). 1.25× the largest, rounded up. A whole-process peak (weights and buffers included,
# arena on) was reported near 27 KiB for x4plus; not reproduced per tile pixel here.
RRDBNET_PIXEL_COST_ORT = 11 * 1024
X4PLUS_PIXEL_COST_ORT = 18 * 1024
#: The backend choice times RRDBNet on 64² tiles: x4plus at 128² takes seconds per run, and
#: the measurement runs at load.
MEASURE_SIDE = 64
# Strengths are rounded to this step so a handful of interpolated networks cover the range.
STRENGTH_STEP = 0.05


def offers_strength(runtime: ModelRuntime) -> bool:
    """The GAN weights `strength` blends toward are installed (and no override replaces PSNR)."""
    return runtime.has_weights([GAN_WEIGHTS]) and not runtime.is_overridden(PSNR_WEIGHTS)


def strength_step(strength: float) -> float:
    return round(round(float(np.clip(strength, 0, 1)) / STRENGTH_STEP) * STRENGTH_STEP, 2)


def load_network(runtime: ModelRuntime, strength: float = 0.0) -> LoadedNetwork:
    """The RRDBNet at `strength` (rounded to :data:`STRENGTH_STEP`), loaded once."""
    step = strength_step(strength) if offers_strength(runtime) else 0.0
    files = [runtime.weights_path(PSNR_WEIGHTS)]
    if step > 0:
        files.append(runtime.weights_path(GAN_WEIGHTS))
    return runtime.load(("esrgan", step), files, lambda: _build(runtime, step))


def _build(runtime: ModelRuntime, step: float) -> LoadedNetwork:
    psnr_path = runtime.weights_path(PSNR_WEIGHTS)
    model = load_rrdbnet(psnr_path)
    weights_id = runtime.weights_sha256(PSNR_WEIGHTS) or psnr_path.name
    if step > 0:
        gan = load_rrdbnet(runtime.weights_path(GAN_WEIGHTS))
        model.load_state_dict(
            interpolate_state_dicts(model.state_dict(), gan.state_dict(), step), strict=True
        )
        weights_id = f"{weights_id}+{runtime.weights_sha256(GAN_WEIGHTS)}@{step:.2f}"
        # An interpolated network is made for a job's strength, from no one weights file:
        # exporting and measuring it would cost that job seconds, so it stays on PyTorch.
        return _wrap(model, weights_id, runtime)
    return choose_backend(runtime, _wrap(model, weights_id, runtime))


def choose_backend(runtime: ModelRuntime, network: LoadedNetwork) -> LoadedNetwork:
    """An RRDBNet loaded from one weights file on the backend the runtime picks for it."""
    assert isinstance(network.module, RRDBNet)
    shipped_size = _shipped_size(network.module)
    return runtime.choose_backend(
        network, Signature(channels=network.in_channels, measure_side=MEASURE_SIDE),
        ort_pixel_cost=RRDBNET_PIXEL_COST_ORT if shipped_size else X4PLUS_PIXEL_COST_ORT)


def _shipped_size(model: RRDBNet) -> bool:
    return model.config.features <= 32 and model.config.blocks <= 4


def _wrap(model: RRDBNet, weights_id: str, runtime: ModelRuntime) -> LoadedNetwork:
    shipped_size = _shipped_size(model)
    return LoadedNetwork(
        module=prepare_for_inference(model, runtime.device),
        device=runtime.device,
        weights_id=weights_id,
        in_channels=model.config.in_channels,
        scale=model.config.scale,
        # Below ×4 the body runs on pixel-unshuffled input: sizes must divide by the factor.
        multiple=4 // model.config.scale,
        pixel_cost=RRDBNET_PIXEL_COST if shipped_size else X4PLUS_PIXEL_COST,
        pixel_cost_bf16=RRDBNET_PIXEL_COST_BF16 if shipped_size else X4PLUS_PIXEL_COST_BF16,
    )


def upscale(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    """4× super-resolution; ``job.strength`` blends PSNR (0) and GAN (1) weights."""
    require_scale(job.scale)
    network = load_network(runtime, job.strength)
    out = runtime.run(network, job.pixels, on_progress=job.on_progress,
                      should_cancel=job.should_cancel, ensemble=job.ensemble)
    details = {"scale": job.scale, "strength": job.strength,
               "weights_sha256": runtime.weights_sha256(PSNR_WEIGHTS)}
    return Restored(out, details)
