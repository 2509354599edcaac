"""The shared inference runtime: conversion, placement, precision policy, strict weights, gate."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from shared.ml import inference
from shared.ml.accel import full_precision
from shared.ml.inference import (
    InferenceGate,
    WeightsMismatchError,
    load_safetensors_strict,
    numpy_to_tensor,
    precision_for,
    prepare_for_inference,
    probe_image,
    run_network,
    save_safetensors_fp16,
    self_ensemble,
    tensor_to_numpy,
    tile_fn,
)
from shared.ml.models.esrgan import RRDBNet
from shared.ml.models.mwcnn import MWCNN, MWCNNConfig, fold_batchnorm, fuse_wavelets
from shared.ml.tiling import run_tiled


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))


def test_numpy_round_trip_gray_and_colour() -> None:
    rng = np.random.default_rng(0)
    for shape in [(7, 9), (7, 9, 3), (5, 4, 4)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        tensor = numpy_to_tensor(image)
        channels = 1 if len(shape) == 2 else shape[2]
        assert tensor.shape == (1, channels, shape[0], shape[1]) and tensor.dtype == torch.float32
        assert float(tensor.min()) >= 0 and float(tensor.max()) <= 1
        np.testing.assert_array_equal(tensor_to_numpy(tensor), image)


def test_tensor_to_numpy_rounds_and_clips() -> None:
    t = torch.tensor([[[[-0.5, 0.0, 1.4 / 255, 1.6 / 255, 1.0, 2.0]]]])
    assert tensor_to_numpy(t).tolist() == [[0, 0, 1, 2, 255, 255]]


def test_numpy_to_tensor_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        numpy_to_tensor(np.zeros((4, 4), dtype=np.int32))


def test_prepare_for_inference() -> None:
    net = prepare_for_inference(_net().train(), torch.device("cpu"))
    assert not net.training
    assert all(not p.requires_grad for p in net.parameters())
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_tile_fn_with_tiler() -> None:
    net = prepare_for_inference(_net(), torch.device("cpu"))
    run = tile_fn(net, torch.device("cpu"), bf16=False)
    out = run_tiled(run, torch.rand(1, 3, 33, 41), tile=16, overlap=8)
    assert out.shape == (1, 3, 33, 41)


def _dihedral_kernels(kernel: torch.Tensor) -> list[torch.Tensor]:
    turns = [torch.rot90(kernel, k, dims=(2, 3)) for k in range(4)]
    return turns + [k.flip(3) for k in turns]


def test_self_ensemble_is_the_conv_with_the_symmetrised_kernel() -> None:
    # conv(T x, k) = T conv(x, T⁻¹ k) for any flip/rotation T (odd kernel, zero padding), so
    # averaging T⁻¹ conv(T x, k) over the 8 T is one conv with the mean of the 8 kernels.
    torch.manual_seed(0)
    kernel = torch.randn(2, 3, 3, 3)
    x = torch.rand(1, 3, 12, 20)  # not square: rotated batches have their sides swapped

    def conv(batch: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(batch, kernel, padding=1)

    symmetric = torch.stack(_dihedral_kernels(kernel)).mean(0)
    expected = torch.nn.functional.conv2d(x, symmetric, padding=1)
    assert torch.allclose(self_ensemble(conv)(x), expected, atol=1e-5)
    assert not torch.allclose(conv(x), expected, atol=1e-3)


def test_run_network_with_ensemble_through_tiles() -> None:
    net = prepare_for_inference(_net(), torch.device("cpu"))
    network = inference.LoadedNetwork(net, torch.device("cpu"), "tiny-test", in_channels=3)
    image = np.random.default_rng(0).integers(0, 256, (37, 29, 3), dtype=np.uint8)
    plain = run_network(network, image)
    ensembled = run_network(network, image, ensemble=True)
    assert ensembled.shape == plain.shape == image.shape
    assert not np.array_equal(plain, ensembled)
    flipped = run_network(network, image[:, ::-1].copy(), ensemble=True)[:, ::-1]
    assert np.abs(flipped.astype(int) - ensembled).max() <= 1  # flip-invariant up to rounding


class _Bf16Sensitive(nn.Module):
    """Adds `error` to its output when autocast is on: stands in for real bf16 rounding."""

    def __init__(self, error: float) -> None:
        super().__init__()
        self.error = error
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        on = torch.is_autocast_enabled(x.device.type)
        return x + (self.error if on else 0.0)


def test_precision_never_bf16_without_native_support() -> None:
    model = _Bf16Sensitive(0.0)
    assert not precision_for(model, torch.device("cpu"), probe_image(3), bf16_capable=False)
    assert model.calls == 0  # nothing even run


def test_precision_bf16_when_capable_and_accurate() -> None:
    inference.clear_precision_cache()
    model = _Bf16Sensitive(1e-4)  # 80 dB
    probe = probe_image(3)
    assert precision_for(model, torch.device("cpu"), probe, model_id="m1", bf16_capable=True)
    assert model.calls == 2
    # cached per model id: not probed again
    assert precision_for(model, torch.device("cpu"), probe, model_id="m1", bf16_capable=True)
    assert model.calls == 2


def test_precision_fp32_when_bf16_is_too_lossy() -> None:
    inference.clear_precision_cache()
    model = _Bf16Sensitive(1e-2)  # 40 dB < 50 dB
    assert not precision_for(
        model, torch.device("cpu"), probe_image(3), model_id="m2", bf16_capable=True
    )


def test_precision_this_machine_follows_accel(monkeypatch: pytest.MonkeyPatch) -> None:
    inference.clear_precision_cache()
    monkeypatch.setattr(inference.accel, "use_bf16", lambda device: False)
    assert not precision_for(_Bf16Sensitive(0.0), torch.device("cpu"), probe_image(3))


def test_strict_load_round_trip(tmp_path: Path) -> None:
    source = _net()
    target = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))
    path = tmp_path / "w.safetensors"
    save_safetensors_fp16(source, path, {"steps": 12, "data": "T91"})
    meta = load_safetensors_strict(target, path)
    assert meta == {"steps": "12", "data": "T91"}
    assert target[0].weight.dtype == torch.float32
    assert torch.allclose(target[0].weight, source[0].weight, atol=1e-3)


def test_strict_load_lists_missing_and_unexpected(tmp_path: Path) -> None:
    state = {k: v.half() for k, v in _net().state_dict().items()}
    del state["2.bias"]
    state["extra.weight"] = torch.zeros(2, dtype=torch.float16)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsMismatchError) as err:
        load_safetensors_strict(_net(), path)
    assert "missing keys (1): 2.bias" in str(err.value)
    assert "unexpected keys (1): extra.weight" in str(err.value)


def test_strict_load_reports_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "wide.safetensors"
    wide = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    save_safetensors_fp16(wide, path)
    with pytest.raises(WeightsMismatchError, match="shape mismatches"):
        load_safetensors_strict(_net(), path)


def test_gate_allows_configured_concurrency() -> None:
    gate = InferenceGate(1)
    active, peak = [0], [0]
    guard = threading.Lock()

    def work() -> None:
        with gate:
            with guard:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            deadline = time.monotonic() + 0.5  # linger until the others could join
            while peak[0] < gate.slots and time.monotonic() < deadline:
                time.sleep(0.005)
            with guard:
                active[0] -= 1

    for slots, expected in [(1, 1), (2, 2)]:
        gate.configure(slots)
        peak[0] = 0
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert peak[0] == expected


def test_full_precision_runs_a_layer_in_fp32_under_autocast() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randint(0, 256, (1, 3, 16, 16)).float() / 255  # an 8-bit image
    with torch.no_grad():
        exact = conv(x)
        assert torch.equal(full_precision(conv, x), exact)  # no autocast: the layer as is
        with torch.autocast("cpu", dtype=torch.bfloat16):
            kept = full_precision(conv, x)
            rounded = conv(x)
    assert kept.dtype == torch.bfloat16  # what the next layer under autocast takes anyway
    assert torch.equal(kept, exact.bfloat16())
    assert (rounded.float() - exact).abs().max() > (kept.float() - exact).abs().max()


def _first_conv_dtype(model: nn.Module, first: nn.Module, *args: object) -> torch.dtype:
    seen: list[torch.dtype] = []
    first.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(*args)
    return seen[0]


def test_first_convs_of_rrdbnet_and_fused_mwcnn_run_in_fp32_under_autocast() -> None:
    torch.manual_seed(0)
    rrdbnet = RRDBNet(features=8, blocks=1, growth=4).eval()
    assert _first_conv_dtype(rrdbnet, rrdbnet.conv_first, torch.rand(1, 3, 8, 8)) == torch.float32
    config = MWCNNConfig(in_channels=1, widths=(8, 8, 8), block_depth=2, bottom_depth=2)
    mwcnn = fuse_wavelets(fold_batchnorm(MWCNN(config).eval()))
    first = mwcnn.enc1[0]
    assert _first_conv_dtype(mwcnn, first, torch.rand(1, 1, 16, 16), 0.1) == torch.float32
    assert _first_conv_dtype(mwcnn, mwcnn.enc2[0], torch.rand(1, 1, 16, 16), 0.1) == torch.bfloat16



@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: nothing to oversubscribe")
def test_the_process_thread_count_holds_on_an_inference_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenMP keeps its thread count per thread: a service's inference thread must be held to
    RESTORA_THREADS like the thread that chose it (it ran oneDNN on every core)."""
    before = torch.get_num_threads()
    monkeypatch.setattr(inference, "_cpu_threads", 0)  # the process's choice comes back after
    inference.set_cpu_threads(1)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1).eval()
    x = torch.rand(1, 32, 192, 192)
    busy: list[float] = []

    def on_a_new_thread() -> None:
        inference.use_cpu_threads_here()
        with torch.no_grad():
            conv(x)  # warm-up
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(8):
                conv(x)
        # the process's CPU time: helper threads on other cores count in it
        busy.append((time.process_time() - cpu) / (time.perf_counter() - wall))

    try:
        worker = threading.Thread(target=on_a_new_thread)
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(before)
    assert busy[0] < 1.4, f"{busy[0]:.2f} cores busy on an inference thread held to one"
