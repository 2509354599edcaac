"""Train the DeepFill v1 generator (contextual attention) for inpainting (resumable, CPU or CUDA).

    nice -n 19 python -m training.train_deepfill --run-dir runs/deepfill --width 16 \\
        --steps 20000 --batch 8 --size 128 --threads 1 [--resume] [--init FILE]
    python -m training.train_deepfill --run-dir runs/deepfill --export \\
        weights/deepfill-contextual-attention.safetensors     # best.pt → fp16 + provenance

Stage 1 (default): the reconstruction loss alone, the spatially discounted L1 (γ = 0.99, from a
distance transform of the free-form mask) on the hole plus L1 on the known pixels, for the coarse
and the refined output (``training.deepfill_critics.reconstruction_loss``). Stage 2
(``--adversarial``, usually with ``--init`` from stage 1): adds the paper's global and local
WGAN-GP critics (generator weight ``--gan-weight`` 0.001 as in the release, λ = 10,
``--d-steps`` critic updates per generator update).

``--prefill telea`` gives the coarse network an OpenCV Telea fill of the hole instead of the
paper's zeros (a deviation, argued in ``shared/ml/models/deepfill_contextual_attention.py``); it is
stored in the weights' config, and inference prefills the same way.

Data: random crops (``--size`` 128–256, random flips/rotations) of ``train/BSD200`` and
``train/T91`` (images smaller than the crop are skipped); masks from ``training.masks`` (free-form
strokes + rectangles, bands 1–50 %). Validation: the held-out BSD200 images of
``training.data.VALIDATION`` (centre 256² crops), each with ``--val-masks`` seeded masks at
each of 10–20, 20–30 and 30–40 %: PSNR and L1 inside the hole, for the network (composited) and
for OpenCV Telea on the same inputs, logged every ``--val-every`` steps; ``best.pt`` keeps the
best hole PSNR.
``--ema 0.999`` validates (so keeps in ``best.pt`` and exports) a moving average of the generator's
weights instead of its last iterate (``training.common.WeightAverage``); a resume continues it.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from shared.ml.accel import autocast_for
from shared.ml.inpaint_window import telea_fill
from shared.ml.models.deepfill_contextual_attention import (
    OUTPUTS,
    PREFILLS,
    SIZE_MULTIPLE,
    DeepFillConfig,
    DeepFillV1,
    config_from_metadata,
    count_parameters,
)
from shared.ml.provenance import TrainingData
from training.common import (
    LoopSettings,
    Prepared,
    RunContext,
    RunLog,
    RunSpec,
    Validation,
    export_fp16_safetensors,
    load_checkpoint,
    run_training,
)
from training.data import (
    COLOUR_SOURCES,
    VALIDATION,
    data_root,
    load_folder,
    random_crop,
    random_dihedral,
    read_image,
    to_chw3,
)
from training.deepfill_critics import (
    DISCOUNT_GAMMA,
    GP_LAMBDA,
    HOLE_LOSSES,
    RELEASE_KNOWN_WEIGHT,
    global_critic,
    gradient_penalty,
    local_critic,
    local_crops,
    mask_boxes,
    reconstruction_loss,
    spatial_discount,
)
from training.export import DATA_ROOT, weights_provenance, write_weights_provenance
from training.masks import TRAINING_BANDS, contour_mask, free_form_mask, random_mask
from training.net2wider import widen_deepfill

VAL_SIZE = 256
VAL_BANDS = ("10-20", "20-30", "30-40")
VAL_SEED = 2018
VAL_MASKS_PER_BAND = 4
VAL_MASK_SEED_STRIDE = 1000
#: Validation mask styles; "contour" items are scored under "contour:<band>" keys.
MASK_STYLES = ("free-form", "contour")
CONTOUR_SEED_OFFSET = 500
#: Contour holes are shaped for 512-px images (the benchmark's and a phone photo's working
#: window), also on 256 crops: their distances to known pixels then match the NVIDIA masks' at
#: 512 (quartiles 4.0 / 7.8 / 13.2 px against 4.0 / 7.6 / 13.2; shaped for 256: 2.0 / 4.0 / 6.6).
CONTOUR_SHAPE_SIDE = 512
#: Adam's betas in the paper (and the release), for the generator and the critics.
PAPER_BETAS = (0.5, 0.9)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--width", type=int, default=16, help="the paper's cnum (paper: 32)")
    p.add_argument("--prefill", choices=PREFILLS, default="zeros",
                   help="what the coarse network sees in the hole: the paper's zeros, or an "
                        "OpenCV Telea fill (see shared/ml/models/deepfill_contextual_attention.py)")
    p.add_argument("--output", choices=OUTPUTS, default="image",
                   help="residual: each stage corrects the Telea prefill (needs --prefill telea)")
    p.add_argument("--steps", type=int, default=20000, help="total steps of the cosine schedule")
    p.add_argument("--hours", type=float, default=0.0,
                   help="wall-clock budget of the schedule, resumes included (0: none): the LR "
                        "follows max(step/steps, elapsed/hours)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128, help="crop side, 128..256, multiple of 8")
    p.add_argument("--lr", type=float, default=1e-4, help="the generator's Adam learning rate")
    p.add_argument("--betas", type=float, nargs=2, default=PAPER_BETAS, metavar=("B1", "B2"),
                   help="the generator's Adam betas; the paper's (0.5, 0.9) suit its GAN stage, "
                        "(0.9, 0.999) average more over the small CPU batches of stage 1")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--gamma", type=float, default=DISCOUNT_GAMMA)
    p.add_argument("--hole-loss", choices=HOLE_LOSSES, default="l1",
                   help="the hole's reconstruction term: the paper's (discounted) L1, or L2 for a "
                   "PSNR fine-tune, or psnr: each image's hole PSNR (see "
                   "training.deepfill_critics.reconstruction_loss)")
    p.add_argument("--known-weight", type=float, default=RELEASE_KNOWN_WEIGHT,
                   help="weight of the L1 on known pixels (default: the release's); 0 suits "
                        "residual outputs, whose known pixels are never used and which that L1 "
                        "pins at 0")
    p.add_argument("--adversarial", action="store_true", help="stage 2: add WGAN-GP critics")
    p.add_argument("--gan-weight", type=float, default=0.001)
    p.add_argument("--critic-width", type=int, default=32, help="critics' c (paper: 64)")
    p.add_argument("--d-steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    p.add_argument("--init", type=Path, default=None, help="start from .safetensors or .pt")
    p.add_argument("--widen-to", type=int, metavar="WIDTH",
                   help="with --init: widen the init (its own width) to cnum WIDTH, starting from "
                   "its function (Net2WiderNet, training/net2wider.py); sets --width")
    p.add_argument("--fresh-refinement", action="store_true",
                   help="with --init: re-initialise the refinement stage (coarse stage kept)")
    p.add_argument("--freeze-coarse", action="store_true",
                   help="with --init: train the refinement stage alone (the coarse stage's "
                   "weights fixed, the loss on the refined output only)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate, keep as best.pt and ship an exponential moving average of the "
                        "generator's weights (e.g. 0.999; 0: off). A resume continues it")
    p.add_argument("--data-root", type=Path, default=None, help="default: training.data_root()")
    p.add_argument("--no-val", action="store_true", help="skip validation (timing runs)")
    p.add_argument("--val-masks", type=int, default=VAL_MASKS_PER_BAND,
                   help="validation masks per band per held-out image (1 = the first runs' 12)")
    p.add_argument("--contour-masks", type=float, default=0.0, metavar="SHARE",
                   help="share of training masks drawn by training.masks.contour_mask (thin curved "
                        "occlusion-like holes) instead of strokes and rectangles")
    p.add_argument("--val-contour", action="store_true",
                   help="validate on contour masks too; best.pt then keeps the best mean of both")
    p.add_argument("--export", type=Path, default=None,
                   help="export <run-dir>/best.pt to this fp16 safetensors (+ .json) and exit")
    args = p.parse_args(argv)
    if not 64 <= args.size <= 256 or args.size % SIZE_MULTIPLE:
        p.error("--size must be in 64..256 and a multiple of 8")
    return args


# --------------------------------------------------------------------------- data


def hole_input(image: np.ndarray, mask: np.ndarray, prefill: str) -> np.ndarray:
    """The network's image input (float 3×H×W): the hole zeroed, or prefilled by Telea."""
    if prefill == "telea":
        return to_chw3(telea_fill(image, mask))
    holed = image.copy()
    holed[mask] = 0
    return to_chw3(holed)


@dataclass
class Batch:
    target: np.ndarray  # B×3×S×S in [0, 1]
    inputs: np.ndarray  # the same with the hole zeroed or prefilled (hole_input)
    masks: np.ndarray  # B×1×S×S, 1 = hole
    discount: np.ndarray  # B×1×S×S spatial discount weights


class InpaintSampler:
    """Random crops (flipped/rotated) with a mask (free-form, or contour for `contour_share` of
    them) and its discount weights each."""

    def __init__(self, images: list[np.ndarray], size: int, rng: np.random.Generator,
                 gamma: float, prefill: str = "zeros", contour_share: float = 0.0) -> None:
        self.images, self.size, self.rng, self.gamma = images, size, rng, gamma
        self.prefill, self.contour_share = prefill, contour_share

    def sample(self, batch: int) -> Batch:
        crops, inputs, masks, weights = [], [], [], []
        for _ in range(batch):
            img = self.images[int(self.rng.integers(len(self.images)))]
            crop = random_dihedral(random_crop(img, self.size, self.rng), self.rng)
            mask = random_mask(self.size, self.size, self.rng, TRAINING_BANDS,
                               self.contour_share, CONTOUR_SHAPE_SIDE)
            crops.append(to_chw3(crop))
            inputs.append(hole_input(crop, mask, self.prefill))
            masks.append(mask[None].astype(np.float32))
            weights.append(spatial_discount(mask, self.gamma)[None])
        return Batch(np.stack(crops), np.stack(inputs), np.stack(masks), np.stack(weights))


def training_images(root: Path, size: int) -> list[np.ndarray]:
    train = root / "train"
    return [img for source in COLOUR_SOURCES
            for img in load_folder(train / source, False, VALIDATION.get(source, ()), size)]


@dataclass
class ValItem:
    name: str
    band: str  # the score key: the band, as score_key(style, band)
    image: np.ndarray  # uint8 (S, S, 3)
    mask: np.ndarray  # bool (S, S)
    telea: np.ndarray  # uint8 (S, S, 3), OpenCV Telea on the same input
    style: str = "free-form"


def score_key(style: str, band: str) -> str:
    """Free-form scores keep the first runs' keys ("20-30", "all"); others get "style:band"."""
    return band if style == "free-form" else f"{style}:{band}"


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[top : top + size, left : left + size])


def validation_seed(image_index: int, band_index: int, mask_index: int) -> int:
    """Mask ``mask_index`` = 0 keeps the seeds of the first runs (one mask per band), so their
    12 items stay a subset of any larger validation set."""
    return VAL_SEED + VAL_MASK_SEED_STRIDE * mask_index + len(VAL_BANDS) * image_index + band_index


def validation_items(root: Path, masks_per_band: int = VAL_MASKS_PER_BAND,
                     styles: tuple[str, ...] = ("free-form",)) -> list[ValItem]:
    """Each held-out image × band × ``masks_per_band`` seeded masks of each style: with 12 items
    (one mask), best-checkpoint picks were within the noise of a 0.1 dB goal. Contour items are
    banded as ``contour:<band>``."""
    items = []
    for i, name in enumerate(VALIDATION["BSD200"]):
        image = centre_crop(read_image(root / "train" / "BSD200" / name, False), VAL_SIZE)
        for style in styles:
            for b, band in enumerate(VAL_BANDS):
                for k in range(masks_per_band):
                    mask = validation_mask(style, band, validation_seed(i, b, k))
                    items.append(ValItem(name, score_key(style, band), image, mask,
                                         telea_fill(image, mask), style))
    return items


def validation_mask(style: str, band: str, seed: int) -> np.ndarray:
    if style == "contour":
        return contour_mask(VAL_SIZE, VAL_SIZE, band, seed + CONTOUR_SEED_OFFSET,
                            CONTOUR_SHAPE_SIDE)
    return free_form_mask(VAL_SIZE, VAL_SIZE, band, seed)


def selection_score(scores: dict[str, Any]) -> float:
    """What ``best.pt`` maximises: the hole PSNR over free-form items, or its mean with the
    contour items' when those are validated too (``--val-contour``)."""
    contour = score_key("contour", "all")
    if contour in scores:
        return round((scores["all"]["psnr"] + scores[contour]["psnr"]) / 2, 3)
    return float(scores["all"]["psnr"])


def hole_scores(result: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(PSNR dB, mean |error| on 0–255) over the hole pixels."""
    diff = result[mask].astype(np.float64) - truth[mask].astype(np.float64)
    mse = float(np.mean(diff**2))
    return (math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)), float(np.abs(diff).mean())


@torch.no_grad()
def validate(model: DeepFillV1, items: list[ValItem], device: torch.device) -> dict[str, Any]:
    """Hole PSNR/L1 of the network and of Telea, per band and overall (means over items)."""
    was_training = model.training
    model.eval()
    rows: dict[str, list[tuple[float, float, float, float]]] = {}
    for item in items:
        x = torch.from_numpy(hole_input(item.image, item.mask, model.config.prefill))[None]
        m = torch.from_numpy(item.mask.astype(np.float32))[None, None].to(device)
        with autocast_for(device):
            _, refined = model(x.to(device), m)
        out = refined[0].float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
        ours = hole_scores(out, item.image, item.mask)
        base = hole_scores(item.telea, item.image, item.mask)
        rows.setdefault(item.band, []).append((*ours, *base))
        rows.setdefault(score_key(item.style, "all"), []).append((*ours, *base))
    model.train(was_training)
    scores = {}
    for band, values in rows.items():
        mean = np.mean(np.asarray(values), axis=0)
        psnr, l1, telea_psnr, telea_l1 = (round(float(v), 3) for v in mean)
        scores[band] = {"psnr": psnr, "l1": l1, "telea_psnr": telea_psnr, "telea_l1": telea_l1,
                        "gain_db": round(psnr - telea_psnr, 3)}
    return scores


# --------------------------------------------------------------------------- model / checkpoints


def load_init(model: DeepFillV1, path: Path) -> None:
    """Weights to start from; an image-output init of a residual model keeps its features but
    not its output layers, which are zeroed so that training starts from the Telea fill."""
    if path.suffix == ".safetensors":
        from shared.ml.inference import load_safetensors_strict

        metadata = load_safetensors_strict(model, path)
        init_output = config_from_metadata(metadata).output
    else:
        state = load_checkpoint(path, model=model, restore_rng=False)
        init_output = state.get("extra", {}).get("config", {}).get("output", "image")
    if model.config.output == "residual" and init_output != "residual":
        model.zero_output_layers()


def initial_model(config: DeepFillConfig, init: Path, widen: bool, seed: int) -> DeepFillV1:
    """The model at ``config`` started from ``init``; with ``widen``, ``init`` is loaded at its
    own width (from its checkpoint) and widened to ``config.width``."""
    if not widen:
        model = DeepFillV1(config)
        load_init(model, init)
        return model
    narrow = DeepFillV1(replace(config, width=_init_width(init)))
    load_init(narrow, init)
    return widen_deepfill(narrow, config.width, seed=seed)


def restart_refinement(model: DeepFillV1, seed: int) -> None:
    """Give the refinement stage fresh (seeded) weights and, for a residual model, a zero output
    layer, so the model still returns the coarse stage's fill and training starts from it.

    For weights whose refinement stage has collapsed: the shipped one, trained while the stage
    was given a zeroed hole (fixed since), had inner features of std ~1e-3 and an output layer
    of ~1e-4, a flat spot that a fix of the input alone does not leave.
    """
    with torch.random.fork_rng():  # the run's own generator stream is left untouched
        torch.manual_seed(seed)
        fresh = DeepFillV1(model.config)  # zeroes the output layers when residual
    model.refine.load_state_dict(fresh.refine.state_dict())


def _init_width(path: Path) -> int:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            return config_from_metadata(dict(handle.metadata() or {})).width
    state = torch.load(path, map_location="cpu", weights_only=False)
    return int(state.get("extra", {}).get("config", {})["width"])


class Critics:
    """Stage 2: the global and local WGAN-GP critics and their optimizer."""

    def __init__(self, size: int, width: int, lr: float, device: torch.device) -> None:
        self.local_size = size // 2
        self.global_ = global_critic(size, width).to(device)
        self.local = local_critic(self.local_size, width).to(device)
        params = [*self.global_.parameters(), *self.local.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=lr, betas=PAPER_BETAS)

    def scores(self, images: torch.Tensor, boxes: list[tuple[int, int, int]]) -> torch.Tensor:
        return self.global_(images) + self.local(local_crops(images, boxes, self.local_size))

    def critic_step(self, real: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor) -> float:
        boxes = mask_boxes(mask)
        fake = fake.detach()
        loss = self.scores(fake, boxes).mean() - self.scores(real, boxes).mean()
        local_mask = local_crops(mask, boxes, self.local_size)
        penalty = gradient_penalty(self.global_, real, fake, mask) + gradient_penalty(
            self.local, local_crops(real, boxes, self.local_size),
            local_crops(fake, boxes, self.local_size), local_mask)
        total = loss + GP_LAMBDA * penalty
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return float(loss.detach())

    def generator_loss(self, fake: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return -self.scores(fake, mask_boxes(mask)).mean()

    def state_dict(self) -> dict[str, Any]:
        return {"global": self.global_.state_dict(), "local": self.local.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_.load_state_dict(state["global"])
        self.local.load_state_dict(state["local"])
        self.optimizer.load_state_dict(state["optimizer"])


# --------------------------------------------------------------------------- export


def export(run_dir: Path, out: Path) -> int:
    best = run_dir / "best.pt"
    state = torch.load(best, map_location="cpu", weights_only=False)
    extra = state.get("extra", {})
    config = DeepFillConfig(**extra["config"])
    metadata = {k: str(v) for k, v in config.to_json().items()}
    metadata["steps"] = str(state.get("step"))
    size = export_fp16_safetensors(state["model"], out, metadata)
    if size > 16e6:
        out.unlink()
        print(f"FAIL: {out} is {size / 1e6:.1f} MB > 16 MB", file=sys.stderr)
        return 1
    model = DeepFillV1(config)
    from shared.ml.inference import load_safetensors_strict

    load_safetensors_strict(model, out)  # strict keys: proves the shipped file loads
    record = weights_provenance(
        out, state,
        network="DeepFill v1 generator (Yu et al., CVPR 2018), see "
                "shared/ml/models/deepfill_contextual_attention.py",
        config=config.to_json(), parameters=count_parameters(model), task="inpaint",
        usage={"input": "RGB in [0, 1] and mask (1 = hole), H and W multiples of 8"},
        data=TrainingData(description=extra.get("data"), root=DATA_ROOT,
                          held_out_for_validation=VALIDATION["BSD200"]),
        checks={"reload_strict": True},
    )
    json_path = write_weights_provenance(out, record)
    print(f"wrote {out} ({size / 1e6:.2f} MB) and {json_path}")
    return 0


# --------------------------------------------------------------------------- training


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(array).to(device).contiguous(memory_format=torch.channels_last)


class DeepFillTraining:
    """DeepFill's pieces of a run (:func:`training.common.run_training` drives them)."""

    def __init__(self, args: argparse.Namespace, run: RunContext) -> None:
        self.args, self.device, self.np_rng = args, run.device, run.np_rng
        self.config = DeepFillConfig(width=args.widen_to or args.width, prefill=args.prefill,
                                     output=args.output)
        # A resume loads its own weights: the --init ones would only be overwritten.
        resuming = args.resume and run.last_path.exists()
        self.model = starting_model(args, self.config, run.log, from_init=not resuming)
        self.model = self.model.to(self.device, memory_format=torch.channels_last)
        if args.freeze_coarse:
            self.model.coarse.requires_grad_(False)
        trained = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trained, lr=args.lr, betas=tuple(args.betas))
        self.scheduler = run.schedule.lr_scheduler(self.optimizer, args.warmup, args.min_lr_ratio)
        self.critics = (Critics(args.size, args.critic_width, args.lr, self.device)
                        if args.adversarial else None)
        self.sampler: InpaintSampler | None = None
        self.val_items: list[ValItem] = []

    def describe(self) -> dict[str, Any]:
        return {"config": self.config.to_json()}

    def prepare(self) -> Prepared:
        args = self.args
        root = args.data_root or data_root()
        images = training_images(root, args.size)
        self.sampler = InpaintSampler(images, args.size, self.np_rng, args.gamma,
                                      self.config.prefill, args.contour_masks)
        styles = MASK_STYLES if args.val_contour else ("free-form",)
        self.val_items = [] if args.no_val else validation_items(root, args.val_masks, styles)
        data_note = (f"{len(images)} colour crops sources ({'+'.join(COLOUR_SOURCES)}, "
                     f"≥{args.size}px), held out {VALIDATION['BSD200']}")
        return Prepared(data=data_note, log={"val_items": len(self.val_items)},
                        validates=bool(self.val_items))

    def train_step(self, step: int) -> dict[str, float]:
        assert self.sampler is not None, "prepare() loads the data"
        args, device = self.args, self.device
        batch = self.sampler.sample(args.batch)
        target, mask = to_device(batch.target, device), to_device(batch.masks, device)
        discount = to_device(batch.discount, device)
        with autocast_for(device):
            coarse, refined = self.model(to_device(batch.inputs, device), mask)
        # A frozen coarse stage's term would be a constant: only the refined output is scored.
        outputs: tuple[torch.Tensor, ...] = (
            (refined.float(),) if args.freeze_coarse else (coarse.float(), refined.float()))
        loss = reconstruction_loss(
            outputs, target, mask, discount, hole_loss=args.hole_loss,
            known_weight=args.known_weight,
        )
        losses = {"rec": float(loss.detach())}
        if self.critics is not None:
            completed = DeepFillV1.complete(target, outputs[-1], mask)  # the refined output
            losses["d"] = sum(self.critics.critic_step(target, completed, mask)
                              for _ in range(args.d_steps)) / args.d_steps
            adv = self.critics.generator_loss(completed, mask)
            losses["adv"] = float(adv.detach())
            loss = loss + args.gan_weight * adv
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return losses

    def current_lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def validate(self, model: nn.Module) -> Validation:
        assert isinstance(model, DeepFillV1)
        scores = validate(model, self.val_items, self.device)
        return Validation(score=selection_score(scores), scores=scores, log={"scores": scores})

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"critics": self.critics.state_dict()} if self.critics is not None else {}

    def load_checkpoint_extra(self, extra: Mapping[str, Any]) -> None:
        if self.critics is not None and "critics" in extra:
            self.critics.load_state_dict(extra["critics"])


def starting_model(args: argparse.Namespace, config: DeepFillConfig, log: RunLog,
                   from_init: bool) -> DeepFillV1:
    """The generator before training: from ``--init`` (widened, its refinement stage restarted
    as asked), or at random (also when a resume is about to load its own weights)."""
    if args.widen_to and not args.init:
        raise SystemExit("--widen-to needs --init (the model to widen)")
    if args.fresh_refinement and not args.init:
        raise SystemExit("--fresh-refinement needs --init (the coarse stage to keep)")
    if args.freeze_coarse and not args.init:
        raise SystemExit("--freeze-coarse needs --init (the coarse stage to keep)")
    if not (args.init and from_init):
        return DeepFillV1(config)
    model = initial_model(config, args.init, bool(args.widen_to), args.seed)
    log(f"initialised from {args.init}"
        + (f", widened to cnum {config.width} (Net2WiderNet)" if args.widen_to else ""))
    if args.fresh_refinement:
        restart_refinement(model, args.seed)
        log("refinement stage re-initialised (its output layer at zero)")
    return model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.export is not None:
        return export(args.run_dir, args.export)
    loop = LoopSettings(args.log_every, args.val_every, args.ckpt_minutes, args.max_minutes)
    run_training(RunSpec.from_args(args, desc="deepfill", loop=loop),
                 lambda run: DeepFillTraining(args, run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
