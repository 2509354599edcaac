"""The training scripts run, validate, checkpoint and resume, on a tiny synthetic data folder.

They normally read ``../shared/data/train``; here ``RESTORA_DATA`` points them at a folder made
from scikit-image's bundled photos with the same layout (the held-out validation names
included), and the networks are a few channels wide so a run takes seconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from shared.ml.colour_planes import OPPONENT
from shared.ml.inference import save_safetensors_fp16
from shared.ml.models.deepfill_contextual_attention import DeepFillConfig, DeepFillV1
from shared.ml.models.esrgan import load_rrdbnet
from shared.ml.models.mwcnn import MWCNN, MWCNNConfig, load_mwcnn, save_mwcnn
from shared.ml.provenance import Provenance
from tests.tiny_networks import tiny_plane_network
from training import export, train_deepfill, train_esrgan, train_mwcnn
from training.common import REPO_ROOT, Schedule, WeightAverage, training_lineage
from training.data import VALIDATION, ColourPlaneSampler, PatchSampler, TrainingImages

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save(folder: Path, name: str, image: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / name)


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    gray, colour = data.camera(), data.astronaut()
    for i, name in enumerate((*VALIDATION["Train400"], "train_a.png", "train_b.png")):
        _save(root / "train" / "Train400", name, gray[40 * i : 40 * i + 96, 100:196])
    for i, name in enumerate((*VALIDATION["BSD200"], "train_c.png")):
        _save(root / "train" / "BSD200", name, colour[32 * i : 32 * i + 256, 16 * i : 16 * i + 256])
    _save(root / "train" / "T91", "t1.png", data.chelsea()[:256, :256])
    monkeypatch.setenv("RESTORA_DATA", str(root))
    return root


def _log_events(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "train.log").read_text().splitlines()
    return [json.loads(line.split(" ", 2)[2]) for line in lines if line.split(" ")[1] == event]


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_ema_checkpoints(run: Path, updates: int) -> dict:
    """last.pt holds a real average after `updates` steps, best.pt a model only; returns best.pt."""
    last = _checkpoint(run / "last.pt")
    average = last["extra"]["weight_average"]
    assert average["updates"] == updates
    raw, averaged = last["model"], average["model"]
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw)  # a real average, not a copy
    best = _checkpoint(run / "best.pt")
    assert "optimizer" not in best  # the average only: nothing to resume from here
    assert set(best["model"]) == set(raw)
    return best


def test_mwcnn_training_validates_checkpoints_and_resumes(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    tiny = ["--task", "denoise", "--run-dir", str(run), "--widths", "4", "8", "8",
            "--block-depth", "2", "--bottom-depth", "2", "--batch", "2", "--patch", "32",
            "--log-every", "2", "--val-every", "2", "--warmup", "1"]
    assert train_mwcnn.main([*tiny, "--steps", "4"]) == 0
    assert [v["step"] for v in _log_events(run, "val")] == [2, 4]
    assert [t["step"] for t in _log_events(run, "train")] == [2, 4]
    assert _checkpoint(run / "last.pt")["step"] == 4
    assert (run / "best.pt").is_file()

    assert train_mwcnn.main([*tiny, "--steps", "6", "--resume"]) == 0
    last = _checkpoint(run / "last.pt")
    assert last["step"] == 6
    segments = last["extra"]["history"]["segments"]
    assert [(s["start_step"], s["end_step"]) for s in segments] == [(0, 4), (4, 6)]
    assert _log_events(run, "stop")[-1] == {"best": pytest.approx(last["extra"]["best_psnr"]),
                                             "reason": "done", "step": 6}


def test_a_weight_average_follows_the_mean_of_recent_weights() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average.model.weight.data.fill_(0.0)
    for _ in range(20):  # past the ramp the decay is 0.5: 1, 2, 1, 2, ... averages towards 5/3
        for value in (1.0, 2.0):
            model.weight.data.fill_(value)
            average.update(model)
    assert float(average.model.weight) == pytest.approx(5 / 3, abs=1e-3)
    assert not average.model.weight.requires_grad

    restored = WeightAverage(torch.nn.Linear(1, 1, bias=False), decay=0.5)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 40
    assert torch.equal(restored.model.weight, average.model.weight)


def test_an_ema_run_keeps_the_average_as_best_and_resumes_it(
    data_root: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    tiny = ["--task", "denoise", "--run-dir", str(run), "--widths", "4", "8", "8",
            "--block-depth", "2", "--bottom-depth", "2", "--batch", "2", "--patch", "32",
            "--log-every", "2", "--val-every", "2", "--warmup", "1", "--lr", "1e-2",
            "--ema", "0.9"]
    assert train_mwcnn.main([*tiny, "--steps", "4"]) == 0
    _assert_ema_checkpoints(run, updates=4)

    assert train_mwcnn.main([*tiny, "--steps", "6", "--resume"]) == 0
    assert _checkpoint(run / "last.pt")["extra"]["weight_average"]["updates"] == 6


def test_a_gray_run_converts_a_colour_init_and_trains_on_gray_patches(
    data_root: Path, tmp_path: Path
) -> None:
    init = tmp_path / "colour.safetensors"
    save_mwcnn(MWCNN(MWCNNConfig(widths=(4, 8, 8), block_depth=2, bottom_depth=2,
                                 batch_norm=False)), init)
    run = tmp_path / "run"
    assert train_mwcnn.main(["--task", "denoise", "--run-dir", str(run), "--init", str(init),
                             "--gray", "--batch", "2", "--patch", "32", "--steps", "2",
                             "--val-every", "2", "--warmup", "1"]) == 0
    assert "converted to a one-channel network" in (run / "train.log").read_text()
    assert MWCNNConfig.from_json(_checkpoint(run / "best.pt")["extra"]["config"]).in_channels == 1

    images = TrainingImages.load(min_size=32)
    sampler = PatchSampler(images, "denoise", 32, np.random.default_rng(0), gray_fraction=0.0,
                           channels=1)  # colour sources only: converted to gray
    batch = sampler.sample(3)
    assert batch.inputs.shape == batch.targets.shape == (3, 1, 32, 32)


def test_a_colour_plane_run_starts_at_the_gray_network_and_samples_opponent_planes(
    data_root: Path, tmp_path: Path
) -> None:
    init = tmp_path / "gray.safetensors"
    gray = MWCNN(MWCNNConfig(in_channels=1, widths=(4, 8, 8), block_depth=2, bottom_depth=2,
                             batch_norm=False))
    with torch.no_grad():
        gray.dec1[-1].weight.normal_(0, 0.05)
    save_mwcnn(gray, init)
    run = tmp_path / "run"
    args = ["--task", "denoise", "--run-dir", str(run), "--init", str(init), "--gray",
            "--colour-planes", "--batch", "2", "--patch", "32", "--val-every", "2",
            "--warmup", "1", "--lr", "1e-9"]
    assert train_mwcnn.main([*args, "--steps", "2"]) == 0
    config = MWCNNConfig.from_json(_checkpoint(run / "best.pt")["extra"]["config"])
    assert (config.in_channels, config.guide_channels) == (1, 3)
    # validated as the service runs it: RGB PSNR of the three planes, per σ; at lr 1e-9 the
    # zero-weighted guides leave the gray network's function, so both validations agree
    vals = _log_events(run, "val")
    assert set(vals[0]["psnr"]) == {"15", "25", "50", "all"}
    assert vals[-1]["psnr"]["all"] == pytest.approx(vals[0]["psnr"]["all"], abs=1e-3)

    sampler = ColourPlaneSampler(TrainingImages.load(min_size=32), 32,
                                 np.random.default_rng(0), OPPONENT)
    batch = sampler.sample(6)
    assert batch.inputs.shape == batch.targets.shape == (6, 1, 32, 32)
    assert batch.guides.shape == (6, 3, 32, 32)
    # the plane to restore is one of the three guides, and its level is σ times its gain
    matches = [[np.array_equal(batch.inputs[i, 0], batch.guides[i, c]) for c in range(3)]
               for i in range(6)]
    assert all(sum(row) == 1 for row in matches)
    planes = [row.index(True) for row in matches]
    sigmas = batch.levels * 255 / np.asarray(OPPONENT.noise_gains)[planes]
    assert np.all((sigmas >= 0) & (sigmas <= 75.01))


def test_a_chroma_run_trains_beside_a_frozen_luminance_network_and_exports_the_pair(
    data_root: Path, tmp_path: Path
) -> None:
    luma_path, init = tmp_path / "planes.safetensors", tmp_path / "chroma-init.safetensors"
    save_mwcnn(tiny_plane_network(1), luma_path)
    save_mwcnn(tiny_plane_network(2), init)
    run = tmp_path / "run"
    args = ["--task", "denoise", "--run-dir", str(run), "--init", str(init), "--gray",
            "--colour-planes", "--chroma-of", str(luma_path), "--batch", "2", "--patch", "32",
            "--val-every", "2", "--warmup", "1", "--lr", "1e-9", "--steps", "2"]
    with pytest.raises(SystemExit, match="chroma planes only"):
        train_mwcnn.main(args)  # the default plane weights include the luminance
    assert train_mwcnn.main([*args, "--plane-weights", "0", "0.5", "0.5"]) == 0

    # validated as the service runs the pair: luminance by the frozen network, chroma by this
    luma, chroma = load_mwcnn(luma_path).eval(), load_mwcnn(init).eval()
    items = train_mwcnn.colour_validation_set()
    cpu = torch.device("cpu")
    pair = train_mwcnn.validate_colour_planes(chroma, items, cpu, luma=luma)["all"]
    alone = train_mwcnn.validate_colour_planes(chroma, items, cpu)["all"]
    assert pair != pytest.approx(alone, abs=1e-3)
    assert _log_events(run, "val")[0]["psnr"]["all"] == pytest.approx(pair, abs=1e-2)

    out = tmp_path / "chroma.safetensors"
    assert export.main(["--checkpoint", str(run / "best.pt"), "--out", str(out)]) == 0
    provenance = json.loads(out.with_suffix(".json").read_text())
    named = provenance["checks"]["chroma_of"]
    assert named == {"file": luma_path.name,
                     "sha256": hashlib.sha256(luma_path.read_bytes()).hexdigest()}
    assert "denoised by the colour-plane network" in provenance["usage"]["input"]

    # the sampler tells the luminance's level beside the restored plane's
    sampler = ColourPlaneSampler(TrainingImages.load(min_size=32), 32,
                                 np.random.default_rng(0), OPPONENT, plane_weights=(0, 1, 1))
    batch = sampler.sample(4)
    gains = np.asarray(OPPONENT.noise_gains)
    planes = [next(c for c in range(3) if np.array_equal(batch.inputs[i, 0], batch.guides[i, c]))
              for i in range(4)]
    assert 0 not in planes
    np.testing.assert_allclose(batch.luma_levels / gains[0] * gains[planes], batch.levels,
                               rtol=1e-5)


def test_a_fold_bn_run_starts_from_the_init_function_and_resumes_without_batchnorm(
    data_root: Path, tmp_path: Path
) -> None:
    init = tmp_path / "bn.safetensors"
    bn_model = MWCNN(MWCNNConfig(widths=(4, 8, 8), block_depth=2, bottom_depth=2))
    with torch.no_grad():
        bn_model.dec1[-1].weight.normal_(0, 0.05)
        for module in bn_model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
    save_mwcnn(bn_model, init)
    run = tmp_path / "run"
    args = ["--task", "denoise", "--run-dir", str(run), "--init", str(init), "--fold-bn",
            "--batch", "2", "--patch", "32", "--val-every", "2", "--warmup", "1", "--lr", "1e-9"]
    assert train_mwcnn.main([*args, "--steps", "2"]) == 0
    first = _checkpoint(run / "last.pt")
    assert MWCNNConfig.from_json(first["extra"]["config"]).batch_norm is False
    assert not any("running_mean" in key for key in first["model"])
    # At a vanishing learning rate the folded network still computes what the BN one did.
    folded = MWCNN(MWCNNConfig.from_json(first["extra"]["config"]))
    folded.load_state_dict(first["model"])
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded.eval()(x, 0.1), load_mwcnn(init)(x, 0.1),
                                   rtol=1e-4, atol=1e-4)
    assert train_mwcnn.main([*args, "--steps", "4", "--resume"]) == 0
    assert _checkpoint(run / "last.pt")["step"] == 4

    wide_run = tmp_path / "wide"
    wide_args = [*args[:3], str(wide_run), *args[4:], "--widen-to", "6", "12", "10"]
    assert train_mwcnn.main([*wide_args, "--steps", "2"]) == 0
    wide_config = MWCNNConfig.from_json(_checkpoint(wide_run / "last.pt")["extra"]["config"])
    assert wide_config.widths == (6, 12, 10) and not wide_config.batch_norm
    assert train_mwcnn.main([*wide_args, "--steps", "3", "--resume"]) == 0
    with pytest.raises(SystemExit):
        train_mwcnn.main(["--task", "denoise", "--run-dir", str(tmp_path / "x"), "--fold-bn",
                          "--steps", "1"])


@pytest.mark.parametrize(("prefill", "output"), [("zeros", "image"), ("telea", "residual")])
def test_deepfill_training_validates_against_telea_and_stops_on_time(
    data_root: Path, tmp_path: Path, prefill: str, output: str
) -> None:
    run = tmp_path / "run"
    args = ["--run-dir", str(run), "--width", "4", "--batch", "2", "--size", "64",
            "--prefill", prefill, "--output", output,
            "--log-every", "1", "--val-every", "2", "--warmup", "1", "--steps", "2"]
    assert train_deepfill.main(args) == 0
    (val,) = _log_events(run, "val")
    assert val["step"] == 2
    assert set(val["scores"]) >= {"all", "10-20", "20-30", "30-40"}
    assert val["scores"]["all"]["telea_psnr"] > 0
    assert {"rec", "lr", "steps_per_hour"} <= set(_log_events(run, "train")[0])
    # A time limit ends the run at once with a resumable checkpoint.
    assert train_deepfill.main([*args[:-1], "10", "--resume", "--max-minutes", "0.0001"]) == 0
    assert _checkpoint(run / "last.pt")["step"] == 3
    config = _checkpoint(run / "last.pt")["extra"]["config"]
    assert (config["prefill"], config["output"]) == (prefill, output)
    assert _adam_betas(run) == train_deepfill.PAPER_BETAS


def test_deepfill_contour_run_trains_on_them_and_keeps_the_best_of_both_styles(
    data_root: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = [*_tiny_deepfill_args(run, val_every=2), "--steps", "2",
            "--contour-masks", "1", "--val-contour", "--val-masks", "1"]
    assert train_deepfill.main(args) == 0
    (val,) = _log_events(run, "val")
    assert {"all", "contour:all", "contour:20-30"} <= set(val["scores"])
    assert val["best"] == train_deepfill.selection_score(val["scores"])
    assert _checkpoint(run / "last.pt")["step"] == 2


def test_deepfill_frozen_coarse_run_trains_the_refinement_stage_alone(
    data_root: Path, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    tiny = ["--prefill", "telea", "--output", "residual", "--no-val", "--steps", "2"]
    assert train_deepfill.main([*_tiny_deepfill_args(first, val_every=2), *tiny]) == 0
    init = _checkpoint(first / "last.pt")["model"]
    assert train_deepfill.main([*_tiny_deepfill_args(second, val_every=2), *tiny,
                                "--init", str(first / "last.pt"), "--fresh-refinement",
                                "--freeze-coarse", "--known-weight", "0", "--lr", "1e-2"]) == 0
    trained = _checkpoint(second / "last.pt")["model"]
    coarse = [k for k in init if k.startswith("coarse.")]
    refine = [k for k in init if k.startswith("refine.")]
    assert coarse and refine
    assert all(torch.equal(init[k], trained[k]) for k in coarse)
    output_layer = [k for k in refine if k.endswith(".weight")][-1]
    assert float(trained[output_layer].abs().max()) > 0  # moved off its zero start
    with pytest.raises(SystemExit, match="--freeze-coarse needs --init"):
        train_deepfill.main([*_tiny_deepfill_args(second, val_every=2), "--freeze-coarse"])


def _tiny_deepfill_args(run: Path, val_every: int) -> list[str]:
    """A width-4 generator on 64² crops, logging every step: seconds per run."""
    return ["--run-dir", str(run), "--width", "4", "--batch", "2", "--size", "64",
            "--log-every", "1", "--val-every", str(val_every), "--warmup", "1"]


def _adam_betas(run: Path) -> tuple[float, ...]:
    return tuple(_checkpoint(run / "last.pt")["optimizer"]["param_groups"][0]["betas"])


def test_a_fresh_refinement_keeps_the_coarse_stage_and_returns_its_fill() -> None:
    torch.manual_seed(0)
    model = DeepFillV1(DeepFillConfig(width=4, prefill="telea", output="residual"))
    for p in model.parameters():  # a "trained" model: every layer non-zero
        torch.nn.init.normal_(p, std=0.05)
    coarse_before = {k: v.clone() for k, v in model.coarse.state_dict().items()}
    refine_before = {k: v.clone() for k, v in model.refine.state_dict().items()}
    train_deepfill.restart_refinement(model, seed=3)
    assert all(torch.equal(v, model.coarse.state_dict()[k]) for k, v in coarse_before.items())
    assert not any(torch.equal(v, model.refine.state_dict()[k]) for k, v in refine_before.items()
                   if v.abs().sum() > 0 and model.refine.state_dict()[k].abs().sum() > 0)
    image, mask = torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    with torch.no_grad():
        coarse, refined = model(image, mask)
    merged = DeepFillV1.complete(image, coarse, mask)
    assert torch.allclose(refined, merged, atol=1e-6)  # refinement adds nothing yet
    assert float((coarse - image).abs().max()) > 1e-3  # and the coarse stage is not a no-op


def test_more_deepfill_validation_masks_keep_the_first_runs_items_and_differ(
    data_root: Path,
) -> None:
    first = train_deepfill.validation_items(data_root, masks_per_band=1)
    more = train_deepfill.validation_items(data_root, masks_per_band=3)
    assert len(first) == len(VALIDATION["BSD200"]) * len(train_deepfill.VAL_BANDS)
    assert len(more) == 3 * len(first)
    key = lambda item: (item.name, item.band, item.mask.tobytes())  # noqa: E731
    assert {key(i) for i in first} <= {key(i) for i in more}  # old scores stay comparable
    assert len({item.mask.tobytes() for item in more}) == len(more)


def test_contour_validation_items_are_scored_apart_and_both_styles_pick_the_best(
    data_root: Path,
) -> None:
    items = train_deepfill.validation_items(data_root, 1, train_deepfill.MASK_STYLES)
    free = [i for i in items if ":" not in i.band]
    contour = [i for i in items if i.band.startswith("contour:")]
    assert len(free) == len(contour) == len(items) // 2
    assert {i.mask.tobytes() for i in free}.isdisjoint({i.mask.tobytes() for i in contour})
    scores = {"all": {"psnr": 20.0}, "contour:all": {"psnr": 22.0}}
    assert train_deepfill.selection_score(scores) == 21.0
    assert train_deepfill.selection_score({"all": {"psnr": 20.0}}) == 20.0


def test_deepfill_ema_run_validates_and_exports_the_average(
    data_root: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = [*_tiny_deepfill_args(run, val_every=3), "--lr", "1e-2",
            "--ema", "0.9", "--betas", "0.9", "0.999"]
    assert train_deepfill.main([*args, "--steps", "3"]) == 0
    assert _adam_betas(run) == (0.9, 0.999)
    best = _assert_ema_checkpoints(run, updates=3)
    average = _checkpoint(run / "last.pt")["extra"]["weight_average"]["model"]
    assert all(torch.equal(best["model"][k], average[k]) for k in average)
    assert train_deepfill.main([*args, "--steps", "5", "--resume"]) == 0
    assert _checkpoint(run / "last.pt")["extra"]["weight_average"]["updates"] == 5
    out = tmp_path / "ema.safetensors"
    assert train_deepfill.main(["--run-dir", str(run), "--export", str(out)]) == 0
    assert out.is_file()
    record = Provenance.from_json(json.loads(out.with_suffix(".json").read_text()))
    best = _checkpoint(run / "best.pt")
    assert record.task == "inpaint" and record.best_step == record.steps == best["step"]
    assert record.validation == best["extra"]["best_scores"]


def test_esrgan_psnr_stage_exports_weights_a_gan_stage_starts_from(
    data_root: Path, tmp_path: Path
) -> None:
    psnr_run, gan_run = tmp_path / "psnr", tmp_path / "gan"
    tiny = ["--data", str(data_root), "--features", "4", "--blocks", "1", "--growth", "4",
            "--batch", "2", "--lr-patch", "8", "--val-every", "2", "--threads", "1"]
    exported = tmp_path / "esrgan-psnr.safetensors"
    assert train_esrgan.main(["--stage", "psnr", "--run-dir", str(psnr_run), "--steps", "4",
                              "--export", str(exported), *tiny]) == 0
    vals = _log_events(psnr_run, "val")
    assert [v["step"] for v in vals] == [2, 4]
    assert all(v["bicubic"] > 0 and v["val_psnr"] > 0 for v in vals)
    assert load_rrdbnet(exported).config.features == 4
    provenance = json.loads(exported.with_suffix(".json").read_text())
    assert provenance["steps"] == 4 and provenance["dtype"] == "float16"
    record = Provenance.from_json(provenance)  # the same schema as MWCNN's and DeepFill's
    assert record.sha256 == hashlib.sha256(exported.read_bytes()).hexdigest()
    assert record.task == "superres" and record.checks["reload_strict"]

    assert train_esrgan.main(["--stage", "gan", "--run-dir", str(gan_run), "--steps", "2",
                              "--init", str(exported), "--d-features", "4", *tiny]) == 0
    (val,) = _log_events(gan_run, "val")
    assert {"l1", "lap1", "g_gan", "d"} <= set(val)


def test_esrgan_runs_through_the_shared_skeleton_and_resumes_where_it_stopped(
    data_root: Path, tmp_path: Path
) -> None:
    run = tmp_path / "psnr"
    tiny = ["--stage", "psnr", "--run-dir", str(run), "--data", str(data_root), "--features", "4",
            "--blocks", "1", "--growth", "4", "--batch", "2", "--lr-patch", "8",
            "--val-every", "2", "--threads", "1"]
    assert train_esrgan.main([*tiny, "--steps", "2"]) == 0
    assert train_esrgan.main([*tiny, "--steps", "5", "--resume"]) == 0
    last = _checkpoint(run / "last.pt")
    assert last["step"] == 5
    # The skeleton's checkpoint: resumed segments, the clock and the best score it tracks.
    segments = last["extra"]["history"]["segments"]
    assert [(s["start_step"], s["end_step"]) for s in segments] == [(0, 2), (2, 5)]
    assert last["extra"]["elapsed_s"] > 0 and last["extra"]["best_step"] in (2, 4, 5)
    assert {float(s["step"]) for s in last["optimizer"]["state"].values()} == {5.0}  # Adam resumed
    # Validation every 2 steps and at the end of the schedule; a train line before each.
    assert [v["step"] for v in _log_events(run, "val")] == [2, 4, 5]
    assert [t["step"] for t in _log_events(run, "train")] == [2, 4]
    assert _log_events(run, "stop")[-1]["reason"] == "done"
    assert load_rrdbnet(run / "best_model.pth").config.features == 4  # a bare state dict


def test_every_shipped_provenance_file_follows_the_one_schema() -> None:
    files = sorted((REPO_ROOT / "weights").glob("*.json"))
    assert {f.stem for f in files} >= {"mwcnn-denoise", "esrgan-psnr", "esrgan-gan",
                                       "deepfill-contextual-attention"}
    for path in files:
        record = Provenance.from_json(json.loads(path.read_text()))  # exactly the schema's keys
        weights = path.with_suffix(".safetensors")
        assert record.file == weights.name
        assert record.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
        assert record.bytes == weights.stat().st_size
        assert record.steps_total is None or record.steps_total >= (record.steps or 0)


def test_schedule_follows_steps_or_the_clock_whichever_runs_out_first() -> None:
    schedule = Schedule(total_steps=100, hours=1.0)
    assert schedule.fraction(25) == pytest.approx(0.25, abs=1e-3)
    schedule.elapsed_before = 1800.0  # half an hour trained before a resume
    assert schedule.fraction(10) == pytest.approx(0.5, abs=1e-3)
    assert schedule.fraction(80) == pytest.approx(0.8)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = schedule.lr_scheduler(optimizer, warmup_steps=0, min_ratio=0.0)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.5, abs=0.01)  # cos at the halfway
    schedule.elapsed_before = 3600.0
    assert schedule.done(0) and not Schedule(100).done(99) and Schedule(100).done(100)


def test_a_wall_clock_budget_ends_training_with_a_last_validation(
    data_root: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    assert train_mwcnn.main(["--task", "artifacts", "--run-dir", str(run), "--widths", "4", "8",
                             "8", "--block-depth", "2", "--bottom-depth", "2", "--batch", "2",
                             "--patch", "32", "--steps", "100000", "--hours", "0.0005",
                             "--val-every", "100000", "--warmup", "1"]) == 0
    last = _checkpoint(run / "last.pt")
    assert 0 < last["step"] < 100000 and last["extra"]["elapsed_s"] > 0
    assert [v["step"] for v in _log_events(run, "val")] == [last["step"]]


def test_a_resumed_run_records_what_it_started_from_and_the_steps_behind_it(
    tmp_path: Path,
) -> None:
    shipped = tmp_path / "net.safetensors"
    shipped.write_bytes(b"weights")
    shipped.with_suffix(".json").write_text(json.dumps({"steps": 300, "sha256": "ab12"}))
    lineage = training_lineage(shipped, 200)
    assert lineage["steps_total"] == 500
    assert lineage["resumed_from"]["sha256"] == "ab12"
    assert training_lineage(None, 200) == {"steps_total": 200}


def test_a_focus_range_draws_that_share_of_the_levels_from_it() -> None:
    gray = np.random.default_rng(0).integers(0, 256, (80, 80), dtype=np.uint8)
    images = TrainingImages(gray=[gray], colour=[np.stack([gray] * 3, axis=2)])

    def qualities(focus: tuple[float, float, float] | None) -> np.ndarray:
        sampler = PatchSampler(images, "artifacts", 16, np.random.default_rng(1), focus=focus)
        return np.rint(100 - 100 * sampler.sample(200).levels)

    everywhere, focused = qualities(None), qualities((10, 20, 0.75))
    assert everywhere.min() >= 10 and everywhere.max() <= 90
    assert np.mean(everywhere <= 20) < 0.25  # 11 of the 81 qualities
    assert 0.68 < np.mean(focused <= 20) < 0.9  # 0.75 + 0.25 · 11/81
    assert focused.max() > 20  # the rest still covers the whole served range
    with pytest.raises(ValueError, match="outside"):
        PatchSampler(images, "artifacts", 16, np.random.default_rng(1), focus=(5, 20, 0.5))


def test_a_residual_run_from_image_weights_keeps_features_and_starts_at_telea(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    image_model = DeepFillV1(width=4)
    path = tmp_path / "image.safetensors"
    save_safetensors_fp16(image_model, path, image_model.config.to_json())
    residual = DeepFillV1(DeepFillConfig(width=4, prefill="telea", output="residual"))
    train_deepfill.load_init(residual, path)
    first = residual.coarse.encoder[0][0].weight
    assert torch.allclose(first, image_model.coarse.encoder[0][0].weight, atol=1e-3)  # fp16
    assert not residual.refine.decoder[-1][0].weight.any()
    assert not residual.coarse.decoder[-1][0].bias.any()
