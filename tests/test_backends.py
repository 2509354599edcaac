"""ONNX Runtime as the second backend of the service's path: same output, chosen once, optional."""

from __future__ import annotations

import json
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from shared.ml import backends, registry
from shared.ml.inference import save_safetensors_fp16
from shared.ml.models.esrgan import RRDBNet, RRDBNetConfig, config_metadata, init_rrdbnet_
from shared.ml.models.mwcnn import MWCNN, MWCNNConfig, save_mwcnn, with_guides
from shared.ml.restorers import esrgan, mwcnn
from shared.ml.restorers.common import RestoreJob
from shared.ml.runtime import ModelRuntime
from shared.platform.bootstrap import build_runtime
from shared.platform.config import ModelServiceSettings, load_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"widths": (8, 8, 8), "block_depth": 2, "bottom_depth": 2}
#: As bf16 must, ONNX Runtime must stay this close to PyTorch fp32 (uint8 outputs here).
MIN_PSNR_DB = 50.0


def _tiny_mwcnn(in_channels: int, seed: int, guides: int = 0) -> MWCNN:
    torch.manual_seed(seed)
    model = MWCNN(MWCNNConfig(in_channels=in_channels, **TINY)).eval()  # type: ignore[arg-type]
    if guides:
        model = with_guides(model, guides).eval()
    last, first = model.dec1[-1], model.enc1[0]
    assert isinstance(last, torch.nn.Conv2d) and isinstance(first, torch.nn.Conv2d)
    with torch.no_grad():  # not the identity, and the guides count
        last.weight.normal_(0, 0.05)
        first.weight.normal_(0, 0.2)
    return model


def _tiny_rrdbnet(seed: int) -> RRDBNet:
    torch.manual_seed(seed)
    config = RRDBNetConfig(features=8, blocks=2, growth=4, scale=4)
    return init_rrdbnet_(RRDBNet(**asdict(config))).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny seeded networks saved as the shipped ones are: every MWCNN the denoiser may pick
    (the colour-plane one takes guides), the artifact remover and a shipped-size RRDBNet."""
    folder = tmp_path_factory.mktemp("weights")
    save_mwcnn(_tiny_mwcnn(3, 0), folder / mwcnn.DENOISE_WEIGHTS)
    save_mwcnn(_tiny_mwcnn(1, 1), folder / mwcnn.DENOISE_GRAY_WEIGHTS)
    save_mwcnn(_tiny_mwcnn(1, 2, guides=3), folder / mwcnn.DENOISE_PLANES_WEIGHTS)
    save_mwcnn(_tiny_mwcnn(3, 3), folder / mwcnn.ARTIFACTS_WEIGHTS)
    rrdb = _tiny_rrdbnet(4)
    save_safetensors_fp16(rrdb, folder / esrgan.PSNR_WEIGHTS, config_metadata(rrdb.config))
    return folder


def _runtime(folder: Path, cache: Path, backend: str, **kwargs: object) -> ModelRuntime:
    # fp32, and a small tile budget: many tiles in batches of several, sizes the trace never saw
    return ModelRuntime(folder, torch.device("cpu"), bf16=False, backend=backend,
                        cache_dir=cache, tile_budget_mb=1, **kwargs)  # type: ignore[arg-type]


def _photo(gray: bool = False) -> np.ndarray:
    """72×92: neither side a multiple of 8, more than one tile under a 1 MB budget."""
    rng = np.random.default_rng(7)
    smooth = np.kron(rng.integers(0, 256, (10, 12, 3)), np.ones((8, 8, 1)))[:72, :92]
    noisy = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).round().astype(np.uint8)
    return noisy[..., 0] if gray else noisy


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _loaded(runtime: ModelRuntime, weights: str) -> str:
    return mwcnn.load_network(runtime, weights).backend


# --------------------------------------------------------------------------- same output


CASES = {
    # a colour photo: its opponent planes through the colour-plane network, guides and all
    "colour": ("denoise", "mwcnn", False, {"sigma": 25}, mwcnn.DENOISE_PLANES_WEIGHTS),
    # a gray one: through the gray network, as is
    "gray": ("denoise", "mwcnn", True, {"sigma": 25}, mwcnn.DENOISE_GRAY_WEIGHTS),
    # the colour artifact remover at a JPEG quality, with the 8 flips of the ensemble
    "artifacts": ("artifacts", "mwcnn", False, {"quality": 30, "ensemble": True},
                  mwcnn.ARTIFACTS_WEIGHTS),
}


@pytest.fixture
def same_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both backends budget the same memory per pixel, so they cut the same tiles and only the
    runtime differs (a tiny network sees past the overlap: other tiles, other output)."""
    monkeypatch.setattr(mwcnn, "MWCNN_PIXEL_COST_ORT", mwcnn.MWCNN_PIXEL_COST)
    monkeypatch.setattr(esrgan, "RRDBNET_PIXEL_COST_ORT", esrgan.RRDBNET_PIXEL_COST)


@pytest.mark.usefixtures("same_tiles")
@pytest.mark.parametrize("case", list(CASES))
def test_onnxruntime_gives_pytorchs_fp32_output_through_the_restore_path(
    case: str, weights: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    task, model, gray, options, network = CASES[case]
    image = _photo(gray)
    job = RestoreJob(image, **options)  # type: ignore[arg-type]
    on_ort = _runtime(weights, tmp_path, backends.ORT)
    assert _loaded(on_ort, network) == backends.ORT
    expected = registry.restore(_runtime(weights, tmp_path, backends.TORCH), task, model, job)
    got = registry.restore(on_ort, task, model, job)
    assert got.pixels.shape == image.shape and got.pixels.dtype == np.uint8
    assert _psnr(expected.pixels, got.pixels) >= MIN_PSNR_DB
    assert got.details == expected.details


@pytest.mark.usefixtures("same_tiles")
def test_a_shipped_size_rrdbnet_runs_on_onnxruntime_too(weights: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    image = _photo()[:24, :28]
    job = RestoreJob(image, scale=4)
    on_ort = _runtime(weights, tmp_path, backends.ORT)
    network = esrgan.load_network(on_ort)
    assert network.backend == backends.ORT
    expected = registry.restore(_runtime(weights, tmp_path, backends.TORCH), "superres",
                                "esrgan", job)
    got = registry.restore(on_ort, "superres", "esrgan", job)
    assert got.pixels.shape == (96, 112, 3)
    assert _psnr(expected.pixels, got.pixels) >= MIN_PSNR_DB


def test_the_session_takes_the_modules_arguments(weights: Path, tmp_path: Path) -> None:
    """net(x, level, guide) as the restorers call it: a float level or one per image."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    network = mwcnn.load_network(_runtime(weights, tmp_path, backends.ORT),
                                 mwcnn.DENOISE_PLANES_WEIGHTS)
    assert network.ort is not None and network.net is network.ort
    gen = torch.Generator().manual_seed(0)
    x, guide = torch.rand(2, 1, 16, 24, generator=gen), torch.rand(2, 3, 16, 24, generator=gen)
    with torch.inference_mode():
        same = network.net(x, torch.tensor([0.1, 0.1]), guide)
        assert torch.equal(network.net(x, 0.1, guide), same)
        assert torch.allclose(same, network.module(x, 0.1, guide), atol=1e-5)
        assert not torch.equal(network.net(x, torch.tensor([0.1, 0.3]), guide), same)
    # the tiler budgets the session's memory, not PyTorch's, and no bf16 applies to it
    assert network.cost_per_pixel(bf16=True) == mwcnn.MWCNN_PIXEL_COST_ORT
    superres = esrgan.load_network(_runtime(weights, tmp_path, backends.ORT))
    assert superres.cost_per_pixel(bf16=True) == esrgan.RRDBNET_PIXEL_COST_ORT


def test_sessions_do_not_spin_on_the_cores_they_share(weights: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    network = mwcnn.load_network(_runtime(weights, tmp_path, backends.ORT),
                                 mwcnn.ARTIFACTS_WEIGHTS)
    assert network.ort is not None
    options = network.ort.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


# --------------------------------------------------------------------------- the setting


def _no_onnxruntime() -> types.ModuleType | None:
    raise AssertionError("RESTORA_BACKEND=torch imported onnxruntime")


def test_restora_backend_torch_never_touches_onnxruntime(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "import_onnxruntime", _no_onnxruntime)
    settings = load_settings(ModelServiceSettings, {
        "RESTORA_WEIGHTS_DIR": str(weights), "RESTORA_DEVICE": "cpu",
        "RESTORA_BACKEND": "torch", "RESTORA_CACHE_DIR": str(tmp_path / "cache")})
    runtime = build_runtime(settings, settings.weights_dir)
    assert runtime.backend == backends.TORCH and runtime.cache_dir == tmp_path / "cache"
    for name in (mwcnn.DENOISE_PLANES_WEIGHTS, mwcnn.DENOISE_GRAY_WEIGHTS):
        assert _loaded(runtime, name) == backends.TORCH
    result = registry.restore(runtime, "denoise", "mwcnn", RestoreJob(_photo(), sigma=25))
    assert result.pixels.shape == _photo().shape
    assert not (tmp_path / "cache").exists()  # nothing exported, nothing measured


def test_the_service_measures_by_default_and_rejects_unknown_backends(tmp_path: Path) -> None:
    settings = load_settings(ModelServiceSettings, {"RESTORA_DEVICE": "cpu"})
    assert settings.backend == backends.AUTO
    assert build_runtime(settings, tmp_path).cache_dir == backends.default_cache_dir()
    with pytest.raises(ValueError, match="RESTORA_BACKEND"):
        ModelRuntime(tmp_path, torch.device("cpu"), backend="tensorrt")
    # a runtime built in code (tests, tools) stays on PyTorch unless asked
    assert ModelRuntime(tmp_path, torch.device("cpu")).backend == backends.TORCH


# --------------------------------------------------------------------------- fallback


def _fallbacks(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == "backend_fallback"]


@pytest.mark.parametrize("mode", [backends.AUTO, backends.ORT])
def test_without_onnxruntime_it_runs_on_pytorch_after_one_log_line(
    mode: str, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "import_onnxruntime", lambda: None)
    backends._log_unavailable.cache_clear()  # once per process: this test's process is shared
    runtime = _runtime(weights, tmp_path, mode)
    with capture_logs() as logs:
        names = [mwcnn.DENOISE_PLANES_WEIGHTS, mwcnn.DENOISE_GRAY_WEIGHTS, mwcnn.ARTIFACTS_WEIGHTS]
        assert [_loaded(runtime, name) for name in names] == [backends.TORCH] * 3
        result = registry.restore(runtime, "denoise", "mwcnn", RestoreJob(_photo(), sigma=25))
    assert result.pixels.shape == _photo().shape
    (line,) = _fallbacks(logs)
    assert line["backend"] == backends.TORCH and "onnxruntime" in str(line["reason"])


def test_a_broken_onnxruntime_falls_back_to_pytorch(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importable, but its sessions fail (a wheel without its library, an unknown op)."""
    pytest.importorskip("onnx")

    class Options(types.SimpleNamespace):
        def add_session_config_entry(self, key: str, value: str) -> None:
            setattr(self, key, value)

    class Broken(types.ModuleType):
        __version__ = "0-broken"
        SessionOptions = Options
        ExecutionMode = types.SimpleNamespace(ORT_SEQUENTIAL=1)

        @staticmethod
        def InferenceSession(*_args: object, **_kwargs: object) -> object:
            raise RuntimeError("onnxruntime_pybind11_state: cannot load")

    monkeypatch.setattr(backends, "import_onnxruntime", lambda: Broken("onnxruntime"))
    with capture_logs() as logs:
        assert _loaded(_runtime(weights, tmp_path, backends.AUTO),
                       mwcnn.DENOISE_GRAY_WEIGHTS) == backends.TORCH
    (line,) = _fallbacks(logs)
    assert "cannot load" in str(line["reason"])


# --------------------------------------------------------------------------- once per file


def _fixed_race(times: Mapping[str, float], calls: list[int]) -> Callable[..., dict[str, float]]:
    def race(candidates: Mapping[str, Callable[[], object]], rounds: int = 3) -> dict[str, float]:
        calls.append(1)
        for run in candidates.values():
            run()  # both still run: the measurement's calls are real ones
        return dict(times)

    return race


def test_the_choice_is_measured_once_per_weights_file_and_kept_on_disk(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    calls: list[int] = []
    monkeypatch.setattr(backends, "race",
                        _fixed_race({backends.TORCH: 2.0, backends.ORT: 1.0}, calls))
    first = _runtime(weights, tmp_path, backends.AUTO)
    assert _loaded(first, mwcnn.DENOISE_GRAY_WEIGHTS) == backends.ORT
    assert _loaded(first, mwcnn.DENOISE_GRAY_WEIGHTS) == backends.ORT  # loaded: no new choice
    assert len(calls) == 1
    (kept,) = (tmp_path / "backend").glob("*.json")
    record = json.loads(kept.read_text())
    assert record["decision"]["backend"] == backends.ORT
    assert record["decision"]["psnr_db"] == "inf" or record["decision"]["psnr_db"] >= 50
    assert record["recipe"]["weights_id"] == first.weights_sha256(mwcnn.DENOISE_GRAY_WEIGHTS)
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1

    # another process (a restart): the decision and the export are read, nothing is measured
    monkeypatch.setattr(backends, "race", _fixed_race({}, calls))
    monkeypatch.setattr(backends, "export_onnx", lambda *_: pytest.fail("exported again"))
    assert _loaded(_runtime(weights, tmp_path, backends.AUTO),
                   mwcnn.DENOISE_GRAY_WEIGHTS) == backends.ORT
    assert len(calls) == 1


def test_pytorch_kept_when_faster_and_then_nothing_is_exported(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    calls: list[int] = []
    monkeypatch.setattr(backends, "race",
                        _fixed_race({backends.TORCH: 1.0, backends.ORT: 2.0}, calls))
    assert _loaded(_runtime(weights, tmp_path, backends.AUTO),
                   mwcnn.ARTIFACTS_WEIGHTS) == backends.TORCH
    # a restart reads "torch": no session, no export
    monkeypatch.setattr(backends, "export_onnx", lambda *_: pytest.fail("exported again"))
    monkeypatch.setattr(backends, "open_session", lambda *_: pytest.fail("session opened"))
    assert _loaded(_runtime(weights, tmp_path, backends.AUTO),
                   mwcnn.ARTIFACTS_WEIGHTS) == backends.TORCH
    assert len(calls) == 1


def test_a_new_weights_file_is_measured_again(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    calls: list[int] = []
    monkeypatch.setattr(backends, "race",
                        _fixed_race({backends.TORCH: 2.0, backends.ORT: 1.0}, calls))
    folder = tmp_path / "weights"
    folder.mkdir()
    for seed in (5, 6):  # the same file name, new contents
        save_mwcnn(_tiny_mwcnn(1, seed), folder / mwcnn.DENOISE_GRAY_WEIGHTS)
        _loaded(_runtime(folder, tmp_path / "cache", backends.AUTO), mwcnn.DENOISE_GRAY_WEIGHTS)
    assert len(calls) == 2
    assert len(list((tmp_path / "cache" / "backend").glob("*.json"))) == 2


def test_an_inaccurate_export_is_never_chosen(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")

    def off(self: backends.OrtNetwork, x: torch.Tensor, *_: object) -> torch.Tensor:
        return x.float().contiguous() + 0.01  # ~40 dB from anything

    monkeypatch.setattr(backends.OrtNetwork, "__call__", off)
    for mode in (backends.AUTO, backends.ORT):
        assert _loaded(_runtime(weights, tmp_path / mode, mode),
                       mwcnn.DENOISE_GRAY_WEIGHTS) == backends.TORCH
