"""Real-ESRGAN x4plus restorer: Real-ESRGAN's official weights, converted into the weights
directory by :mod:`shared.ml.convert_x4plus`, run through the shared tiler like ESRGAN's."""

from __future__ import annotations

from shared.ml.inference import LoadedNetwork, prepare_for_inference
from shared.ml.models.esrgan import load_rrdbnet
from shared.ml.restorers.common import Restored, RestoreJob, require_scale
from shared.ml.runtime import ModelRuntime
from shared.ml.x4plus import WEIGHTS

# Peak working memory per input pixel of a tile (23 blocks × 64 features, ×4, fp32): the peak
# RSS grew by 12.8 KiB per pixel for a 128² input and 12.3 KiB for 256² over the loaded network
# (one untiled fp32 forward on the CPU, 2026-12-07; bf16 autocast: 4.0 and 6.6 KiB); the
# largest, rounded up.
PIXEL_COST = 13 * 1024


def load_network(runtime: ModelRuntime) -> LoadedNetwork:
    """The x4plus RRDBNet, loaded once per weights file version."""
    path = runtime.weights_path(WEIGHTS)
    return runtime.load(("realesrgan",), [path], lambda: _build(runtime))


def _build(runtime: ModelRuntime) -> LoadedNetwork:
    path = runtime.weights_path(WEIGHTS)
    model = load_rrdbnet(path)
    return LoadedNetwork(
        module=prepare_for_inference(model, runtime.device),
        device=runtime.device,
        weights_id=runtime.weights_sha256(WEIGHTS) or path.name,
        in_channels=model.config.in_channels,
        scale=model.config.scale,
        pixel_cost=PIXEL_COST,
    )


def upscale(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    """4× super-resolution with Real-ESRGAN's look (no `strength`: one set of weights)."""
    require_scale(job.scale)
    network = load_network(runtime)
    out = runtime.run(network, job.pixels, on_progress=job.on_progress,
                      should_cancel=job.should_cancel, ensemble=job.ensemble)
    return Restored(out, {"scale": job.scale, "weights_sha256": runtime.weights_sha256(WEIGHTS)})
