"""The operator's settings reach the models: RESTORA_WEIGHTS_DIR and RESTORA_DEVICE.

Both used to be parsed and then ignored (every loader read the repository's weights/, and
each network chose its own device); these tests build the runtime exactly as a service does.
"""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import torch

from shared.errors import UnprocessableInput
from shared.ml import registry
from shared.ml.hashing import file_sha256
from shared.ml.models.mwcnn import MWCNN, MWCNNConfig, save_mwcnn
from shared.ml.restorers import mwcnn
from shared.ml.restorers.common import RestoreJob
from shared.ml.runtime import resolve_device
from shared.platform.bootstrap import build_runtime, freeze_startup_objects
from shared.platform.config import EmbeddedSettings, ModelServiceSettings, load_settings
from tests.stack import running_stack

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def own_weights(tmp_path: Path) -> Path:
    """A weights directory of the operator's, holding a tiny MWCNN denoiser only."""
    torch.manual_seed(3)
    folder = tmp_path / "operator-weights"
    folder.mkdir()
    model = MWCNN(MWCNNConfig(widths=(8, 8, 8), block_depth=2, bottom_depth=2)).eval()
    save_mwcnn(model, folder / mwcnn.DENOISE_WEIGHTS)
    return folder


def _noisy_photo() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def test_weights_come_from_restora_weights_dir(own_weights: Path) -> None:
    settings = load_settings(ModelServiceSettings, {"RESTORA_WEIGHTS_DIR": str(own_weights)})
    runtime = build_runtime(settings, settings.weights_dir)

    restored = registry.restore(runtime, "denoise", "mwcnn", RestoreJob(_noisy_photo(), sigma=25))

    assert restored.details["weights_sha256"] == file_sha256(own_weights / mwcnn.DENOISE_WEIGHTS)
    shipped = registry.SHIPPED_WEIGHTS_DIR / mwcnn.DENOISE_WEIGHTS
    assert restored.details["weights_sha256"] != file_sha256(shipped)
    # Only what the directory holds is offered: no JPEG network there.
    assert registry.models_for("artifacts", settings.weights_dir) == ["classic"]
    with pytest.raises(UnprocessableInput, match="not installed"):
        registry.restore(runtime, "artifacts", "mwcnn", RestoreJob(_noisy_photo(), quality=30))


async def test_the_gateway_offers_the_models_of_its_weights_dir(
    own_weights: Path, tmp_path: Path
) -> None:
    async with (
        running_stack(tmp_path, workers=False, weights_dir=own_weights) as stack,
        aiohttp.ClientSession() as session,
        session.get(f"{stack.url}/api/v1/models") as response,
    ):
        body = await response.json()
    assert [m["name"] for m in body["tasks"]["denoise"]["models"]] == ["mwcnn", "classic", "dip"]
    assert body["tasks"]["artifacts"]["default"] == "classic"
    unavailable = {m["name"]: m["reason"] for m in body["tasks"]["superres"]["unavailable"]}
    assert "esrgan-psnr.safetensors" in unavailable["esrgan"]


def test_restora_device_cpu_wins_where_cuda_would_be_chosen(
    own_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA machine
    environ = {"RESTORA_WEIGHTS_DIR": str(own_weights)}
    assert resolve_device("auto").type == "cuda"

    settings = load_settings(ModelServiceSettings, {**environ, "RESTORA_DEVICE": "cpu"})
    runtime = build_runtime(settings, settings.weights_dir)
    assert runtime.device.type == "cpu"
    restored = registry.restore(runtime, "denoise", "mwcnn", RestoreJob(_noisy_photo(), sigma=25))
    assert restored.pixels.shape == (24, 32, 3)
    network = mwcnn.load_network(runtime, mwcnn.DENOISE_WEIGHTS)
    assert {p.device.type for p in network.module.parameters()} == {"cpu"}

    embedded = load_settings(EmbeddedSettings, {**environ, "RESTORA_DEVICE": "cpu"})
    assert build_runtime(embedded, embedded.weights_dir).device.type == "cpu"


def test_restora_device_rejects_what_it_cannot_honour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="use one of"):
        resolve_device("gpu")


def test_a_worker_loads_its_installed_networks_before_the_first_job(own_weights: Path) -> None:
    runtime = build_runtime(ModelServiceSettings(weights_dir=own_weights), own_weights)

    assert registry.preload(runtime, ("denoise", "artifacts")) == ["denoise:mwcnn"]
    loaded = mwcnn.load_network(runtime, mwcnn.DENOISE_WEIGHTS)
    registry.restore(runtime, "denoise", "mwcnn", RestoreJob(_noisy_photo(), sigma=25))
    assert mwcnn.load_network(runtime, mwcnn.DENOISE_WEIGHTS) is loaded  # not loaded again


def test_a_worker_runs_a_small_job_through_each_network_before_the_first_one(
    own_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = build_runtime(ModelServiceSettings(weights_dir=own_weights), own_weights)
    seen: list[tuple[int, ...]] = []
    entry = registry.find("denoise", "mwcnn")
    assert entry is not None
    real = entry.restore

    def counting(rt: object, job: RestoreJob) -> object:
        seen.append(job.pixels.shape)
        return real(rt, job)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "RESTORERS", tuple(
        dataclasses.replace(e, restore=counting) if e is entry else e for e in registry.RESTORERS))
    assert registry.warm(runtime, ("denoise", "artifacts")) == ["denoise:mwcnn"]
    side, heap = registry.WARM_UP_SIDE, registry.HEAP_WARM_UP_SIDE
    assert seen == [(side, side, 3), (heap, heap, 3)]  # then once at a photo's size
    hole = registry.warm_up_job("inpaint").mask
    assert hole is not None and 0 < hole.mean() < 1
    assert registry.warm_up_job("superres").pixels.shape == (side // 2, side // 2, 3)


def test_startup_objects_are_frozen_out_of_the_collectors_sight() -> None:
    """What a worker holds from its start (here: a thousand lists) is out of every collection
    once frozen; what comes later is collected as before."""
    try:
        held_from_start = [[] for _ in range(1000)]
        frozen = freeze_startup_objects()
        later: list[list[int]] = [[]]
        seen = {id(o) for o in gc.get_objects()}
        assert frozen >= len(held_from_start)
        assert not any(id(o) in seen for o in held_from_start)
        assert id(later[0]) in seen
    finally:
        gc.unfreeze()
