"""The speed benchmark's helpers: export cache keys, padding, the interleaving, the summary line
and one contender's worker process (no weights, no shared data)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import speed
from benchmarks.speed_contenders import Network, Spec, Worker, pad_to_multiple, peak_rss_bytes
from benchmarks.speed_graphs import export_key
from shared.ml import registry
from shared.ml.tiling import pad_to_multiple as torch_pad_to_multiple
from tests.tiny_networks import tiny_plane_network

NET = Network("mwcnn-denoise", "MWCNN", "denoise", "mwcnn", "mwcnn", Path("w.safetensors"),
              multiple=8, levels=(25 / 255,))
SHA = "ab" * 32


def test_export_key_names_the_weights_and_changes_with_what_shapes_the_export() -> None:
    key = export_key(NET, SHA, "onnx", {"torch": "2.13.0", "opset": "17"})
    assert key == export_key(NET, SHA, "onnx", {"opset": "17", "torch": "2.13.0"})
    assert key.startswith(f"mwcnn-denoise-{SHA[:16]}-")
    assert all(c.isalnum() or c == "-" for c in key)
    others = {
        export_key(NET, "cd" * 32, "onnx", {"torch": "2.13.0", "opset": "17"}),
        export_key(dataclasses.replace(NET, levels=(15 / 255,)), SHA, "onnx",
                   {"torch": "2.13.0", "opset": "17"}),
        export_key(NET, SHA, "ncnn", {"torch": "2.13.0", "opset": "17"}),
        export_key(NET, SHA, "onnx", {"torch": "2.14.0", "opset": "17"}),
    }
    assert key not in others and len(others) == 4


@pytest.mark.parametrize("shape", [(1, 3, 21, 30), (1, 1, 3, 5), (1, 3, 16, 8)])
def test_padding_matches_the_tiler(shape: tuple[int, ...]) -> None:
    """Reflect where the side allows it, else replicate: what every network input gets."""
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    ours = pad_to_multiple(x, 8)
    theirs = torch_pad_to_multiple(torch.from_numpy(x), 8).numpy()
    assert ours.shape == theirs.shape and ours.shape[2] % 8 == 0 and ours.shape[3] % 8 == 0
    np.testing.assert_array_equal(ours, theirs)


def test_rounds_rotate_the_first_contender() -> None:
    names = ["eager", "onnxruntime", "restora"]
    assert speed.rotated(names, 0) == names
    assert speed.rotated(names, 1) == ["onnxruntime", "restora", "eager"]
    assert speed.rotated(names, 3) == names
    assert speed.rotated([], 2) == []


def test_short_calls_get_more_rounds_within_bounds() -> None:
    assert speed.rounds_for([11.3, 5.7, 2.7], repeats=3) == 3  # x4plus at 256²: as asked
    assert speed.rounds_for([0.03, 0.02, 0.1], repeats=3) == 15  # 1.5 s of the slowest
    assert speed.rounds_for([0.001], repeats=3) == speed.MAX_ROUNDS
    assert speed.rounds_for([0.001], repeats=40) == 40  # never fewer than asked
    assert speed.rounds_for([], repeats=3) == speed.MAX_ROUNDS


def test_inputs_are_deterministic_and_shaped_per_task() -> None:
    for task in speed.TASK_OPTIONS:
        image, mask = speed.bench_input(task, 32)
        again, _ = speed.bench_input(task, 32)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, again)
        assert (mask is not None) == (task == "inpaint")
    _, mask = speed.bench_input("inpaint", 32)
    assert mask is not None and mask.sum() == 16 * 16 and mask[8:24, 8:24].all()


def _row(network: str, contender: str, size: int, seconds: float, psnr: float | None,
         ) -> speed.Row:
    return speed.Row(network, contender, contender, size, (seconds, seconds * 2, seconds / 2),
                     output_pixels=2_000_000, peak_rss=2**20, psnr=psnr)


def test_a_row_counts_only_within_50_db_of_eager() -> None:
    row = _row("n", "onnxruntime", 64, 1.0, 50.0)
    assert row.seconds == 1.0 and row.megapixels_per_second == 2.0 and row.counts
    assert not dataclasses.replace(row, psnr=49.9).counts
    assert not dataclasses.replace(row, psnr=None).counts
    assert not speed.Row("n", "ncnn", "ncnn", 64, note="no ncnn form").counts


def test_summary_names_the_smallest_speedup_and_the_fastest_counted_rows() -> None:
    rows = [
        _row("A", "eager", 64, 1.0, math.inf), _row("A", "restora", 64, 0.5, 60.0),
        _row("A", "onnxruntime", 64, 0.4, 49.0),  # faster but below 50 dB: does not count
        _row("A", "classic", 64, 0.01, 30.0),
        _row("A", "eager", 128, 4.0, math.inf), _row("A", "restora", 128, 2.5, 60.0),
        _row("B", "eager", 64, 3.0, math.inf), _row("B", "restora", 64, 2.0, 55.0),
        _row("B", "ncnn", 64, 1.0, 90.0),
        _row("C", "eager", 64, 1.0, math.inf), _row("C", "restora", 64, 0.1, 40.0),
    ]
    line = speed.summarize(rows)
    assert line.startswith("smallest Restora speedup over eager: 1.50× (B, 64²)")
    assert "A: Restora fastest at every size" in line
    assert "B: not fastest: 64²: ncnn (2.00× faster than Restora)" in line
    assert "C: not fastest: 64²: Restora below 50 dB" in line
    table = "\n".join(speed.format_network("B", [*rows[6:9], speed.Row(
        "B", "onnxruntime", "ONNX Runtime CPU", 64, note="not installed")]))
    assert "n/a: not installed" in table and "ref" in table and "90.0 ≥50" in table


def test_a_contender_serves_rounds_from_its_own_process() -> None:
    """The classic bicubic contender through the worker protocol: output, time, peak RSS."""
    network = dataclasses.replace(NET, task="superres", model="classic", graph="rrdbnet",
                                  scale=4, options={"scale": 4})
    worker = Worker(Spec("classic", network, 1, registry.SHIPPED_WEIGHTS_DIR))
    try:
        image = np.zeros((8, 12, 3), np.uint8)
        assert isinstance(worker.reset_peak(), bool)
        first = worker.run(image, None, keep=True)
        assert first.output is not None and first.output.shape == (32, 48, 3)
        timed = worker.run(image, None)
        assert timed.output is None and timed.output_shape == (32, 48, 3)
        assert timed.seconds > 0 and timed.peak_rss > 0
    finally:
        worker.close()
    assert peak_rss_bytes() > 0


def test_the_peers_colour_graph_runs_the_chroma_cascade_as_the_service(tmp_path: Path) -> None:
    """With a chroma network installed, eager and the exports run what the restorer runs:
    the luminance by the colour-plane network over the service's views, the chroma planes by
    the chroma network."""
    from benchmarks.speed_graphs import build_graph
    from shared.ml.colour_planes import OPPONENT, denoise_planes
    from shared.ml.models.mwcnn import level_from_sigma, save_mwcnn
    from shared.ml.restorers.mwcnn import LUMA_VIEWS

    luma, chroma = tmp_path / "planes.safetensors", tmp_path / "chroma.safetensors"
    save_mwcnn(tiny_plane_network(1), luma)
    save_mwcnn(tiny_plane_network(2), chroma)
    levels = tuple(level_from_sigma(25 * g) for g in OPPONENT.noise_gains)
    network = Network("mwcnn-denoise", "MWCNN", "denoise", "mwcnn", "mwcnn-planes", luma,
                      multiple=8, levels=levels, chroma=chroma)
    x = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        graph = build_graph(network)(x)
        service = denoise_planes(graph_net(luma), x, 25.0, OPPONENT, guided=True,
                                 denoise_chroma=graph_net(chroma), luma_views=LUMA_VIEWS)
        without = build_graph(dataclasses.replace(network, chroma=None))(x)
    torch.testing.assert_close(graph, service, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(graph, without)
    # ONNX Runtime runs the same graph, turned views included (opset 17 has no rot90).
    import onnxruntime

    from benchmarks.speed_graphs import onnx_file

    session = onnxruntime.InferenceSession(str(onnx_file(network, tmp_path / "cache")))
    (exported,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(exported), service, rtol=1e-4, atol=1e-4)
    versions = {"torch": "2.13.0", "opset": "17"}
    assert export_key(network, SHA, "onnx", versions) != export_key(
        dataclasses.replace(network, chroma=None), SHA, "onnx", versions)


def graph_net(path: Path) -> torch.nn.Module:
    from shared.ml.models.mwcnn import load_mwcnn

    return load_mwcnn(path).eval()
