"""Real-ESRGAN x4plus restorer: Real-ESRGAN's official weights, converted into the weights
directory by :mod:`shared.ml.convert_x4plus`, run through the shared tiler like ESRGAN's."""

from __future__ import annotations

from shared.ml.inference import LoadedNetwork, prepare_for_inference
from shared.ml.models.esrgan import load_rrdbnet
from shared.ml.restorers.common import Restored, RestoreJob, require_scale
from shared.ml.restorers.esrgan import X4PLUS_PIXEL_COST, X4PLUS_PIXEL_COST_BF16, choose_backend
from shared.ml.runtime import ModelRuntime
from shared.ml.x4plus import WEIGHTS

# Peak working memory per input pixel of a tile (23 blocks × 64 features, ×4): measured by
# benchmarks/tile_memory.py, see shared.ml.restorers.esrgan.X4PLUS_PIXEL_COST.
PIXEL_COST = X4PLUS_PIXEL_COST
PIXEL_COST_BF16 = X4PLUS_PIXEL_COST_BF16


def load_network(runtime: ModelRuntime) -> LoadedNetwork:
    """The x4plus RRDBNet, loaded once per weights file version."""
    path = runtime.weights_path(WEIGHTS)
    return runtime.load(("realesrgan",), [path], lambda: _build(runtime))


def _build(runtime: ModelRuntime) -> LoadedNetwork:
    path = runtime.weights_path(WEIGHTS)
    model = load_rrdbnet(path)
    return choose_backend(runtime, LoadedNetwork(
        module=prepare_for_inference(model, runtime.device),
        device=runtime.device,
        weights_id=runtime.weights_sha256(WEIGHTS) or path.name,
        in_channels=model.config.in_channels,
        scale=model.config.scale,
        pixel_cost=PIXEL_COST,
        pixel_cost_bf16=PIXEL_COST_BF16,
    ))


def upscale(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    """4× super-resolution with Real-ESRGAN's look (no `strength`: one set of weights)."""
    require_scale(job.scale)
    network = load_network(runtime)
    out = runtime.run(network, job.pixels, on_progress=job.on_progress,
                      should_cancel=job.should_cancel, ensemble=job.ensemble)
    return Restored(out, {"scale": job.scale, "weights_sha256": runtime.weights_sha256(WEIGHTS)})
