"""Train MWCNN for denoising or JPEG artifact removal (resumable, CPU- or CUDA-friendly).

    python -m training.train_mwcnn --task denoise --run-dir runs/mwcnn-denoise \\
        --width 64 --steps 8000 --batch 16 --patch 64 --threads 1 [--resume] \\
        [--init weights/mwcnn-denoise.safetensors]

``<run-dir>/train.log`` gets the machine (CPU model, flags, bf16 decision), the settings, loss
and steps/hour every ``--log-every`` steps and validation PSNR every ``--val-every`` steps.
``last.pt`` (resumable: model, optimizer, scheduler, step, RNGs) is rewritten atomically every
``--ckpt-minutes`` and on SIGTERM/SIGINT; ``best.pt`` keeps the best validation PSNR.
``--ema 0.999`` validates (and so keeps in ``best.pt``, which export ships) a moving average of
the weights instead of the last iterate; ``last.pt`` holds both, so a resume continues the average.
``--width W`` means widths (W, 2W, 2W) — the paper's shape is 160/256/256 (``--widths``).
``--fold-bn`` (with ``--init``) folds the initial model's BatchNorm into its convs and trains on
without it: one set of running statistics cannot serve every level of a level-conditioned
network, so BN's eval-mode output swings from checkpoint to checkpoint (see
:func:`shared.ml.models.mwcnn.fold_batchnorm`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.ml.accel import autocast_for
from shared.ml.colour_planes import OPPONENT, cascade_guide, denoise_planes
from shared.ml.models.mwcnn import (
    MWCNN,
    MWCNNConfig,
    fold_batchnorm,
    gray_from_colour,
    load_mwcnn,
    with_guides,
)
from training.common import (
    LoopSettings,
    Prepared,
    RunContext,
    RunLog,
    RunSpec,
    Validation,
    psnr,
    run_training,
)
from training.data import (
    TASKS,
    VAL_SEED,
    VAL_SIGMAS,
    ColourPlaneSampler,
    PatchSampler,
    TrainingImages,
    ValItem,
    validation_images,
    validation_set,
)
from training.degradations import add_gaussian_noise
from training.net2wider import widen_mwcnn


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--width", type=int, default=None, help="widths W/2W/2W (default: paper's)")
    p.add_argument("--widths", type=int, nargs=3, default=None, help="explicit 3 widths")
    p.add_argument("--block-depth", type=int, default=4)
    p.add_argument("--bottom-depth", type=int, default=8)
    p.add_argument("--no-bn", action="store_true", help="drop BatchNorm (a deviation)")
    p.add_argument("--fold-bn", action="store_true",
                   help="fold the --init model's BatchNorm into its convs and train on without it")
    p.add_argument("--widen-to", type=int, nargs=3, metavar=("W1", "W2", "W3"),
                   help="grow the (BN-free or --fold-bn) --init model to these widths, starting "
                        "from its function (Net2WiderNet, training/net2wider.py)")
    p.add_argument("--gray", action="store_true",
                   help="a one-channel (gray) network trained on gray patches only; a colour "
                        "--init is converted to it exactly (mwcnn.gray_from_colour)")
    p.add_argument("--colour-planes", action="store_true",
                   help="a gray network that restores one opponent plane of a colour patch while "
                        "it sees all three (guide channels); a --gray --init starts it exactly "
                        "where it was (mwcnn.with_guides)")
    p.add_argument("--plane-weights", type=float, nargs=3, default=(1 / 3, 1 / 3, 1 / 3),
                   metavar=("LUMA", "CHROMA1", "CHROMA2"),
                   help="--colour-planes: how often each opponent plane is the one to restore")
    p.add_argument("--chroma-of", type=Path, default=None, metavar="PLANES_WEIGHTS",
                   help="--colour-planes: train the chroma network of a cascade: the luminance is "
                        "restored by these (frozen) weights first, and the network restores the "
                        "chroma planes seeing it denoised (colour_planes.cascade_guide); use "
                        "--plane-weights 0 0.5 0.5")
    p.add_argument("--steps", type=int, required=True, help="total steps of the cosine schedule")
    p.add_argument("--hours", type=float, default=0.0,
                   help="wall-clock budget of the schedule, resumes included (0: none): the LR "
                        "follows max(step/steps, elapsed/hours)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.02)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--loss", choices=("l1", "l2"), default="l2")
    p.add_argument("--gray-fraction", type=float, default=0.5)
    p.add_argument("--clip-prob", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--focus-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="draw --focus-prob of the levels (σ or JPEG quality) from this range")
    p.add_argument("--focus-prob", type=float, default=0.5)
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate, keep as best.pt and ship an exponential moving average of "
                        "the weights with this decay (e.g. 0.999; 0: off, the raw weights)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    p.add_argument("--init", type=Path, default=None, help="start from shipped safetensors")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop (with a checkpoint) after this long, e.g. for a speed probe")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> MWCNNConfig:
    if args.widths:
        widths = tuple(args.widths)
    elif args.width:
        widths = (args.width, 2 * args.width, 2 * args.width)
    else:
        widths = MWCNNConfig().widths
    return MWCNNConfig(widths=widths, block_depth=args.block_depth,  # type: ignore[arg-type]
                       bottom_depth=args.bottom_depth, batch_norm=not args.no_bn,
                       in_channels=1 if args.gray else 3,
                       guide_channels=PLANES if args.colour_planes else 0)


def to_tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(x).to(device, non_blocking=True)
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def restored_uint8(out: torch.Tensor) -> torch.Tensor:
    """What a user gets back: clamped and rounded to 8-bit levels (scale 0–1)."""
    return torch.round(out.float().clamp(0, 1) * 255) / 255


@torch.no_grad()
def validate(model: nn.Module, items: list[ValItem], device: torch.device,
             bf16: bool | None = None) -> dict[str, float]:
    """Mean PSNR (8-bit outputs; gray scored on the channel mean) overall and per level
    (``bf16``: None runs as training does, False in fp32)."""
    was_training = model.training
    model.eval()
    scores: dict[str, list[float]] = {}
    for item in items:
        inp = to_tensor(item.input[None], device)
        with autocast_for(device, bf16):
            out = model(inp, torch.tensor([item.level], device=device))
        out = restored_uint8(out)[0].cpu()
        target = torch.from_numpy(item.target)
        if item.gray:
            out, target = out.mean(0), target[0]
        level_key = item.name.rsplit("@", 1)[1]
        scores.setdefault(level_key, []).append(psnr(out, target))
        scores.setdefault("all", []).append(psnr(out, target))
    model.train(was_training)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def input_psnr(items: list[ValItem]) -> dict[str, float]:
    """Validation PSNR of the degraded inputs themselves (8-bit), the floor to beat."""
    scores: dict[str, list[float]] = {}
    for item in items:
        inp = restored_uint8(torch.from_numpy(item.input))
        target = torch.from_numpy(item.target)
        value = psnr(inp[0], target[0]) if item.gray else psnr(inp, target)
        scores.setdefault(item.name.rsplit("@", 1)[1], []).append(value)
        scores.setdefault("all", []).append(value)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def build_model(args: argparse.Namespace, device: torch.device, log: RunLog) -> MWCNN:
    config = config_from_args(args)
    if args.init is not None:
        shipped = load_mwcnn(args.init)
        if shipped.config != config:
            log(f"--init {args.init}: using its config {shipped.config} (CLI shape ignored)")
        model = shipped.train()
        if args.fold_bn:
            model = fold_batchnorm(model)
            log(f"--fold-bn: BatchNorm folded into the convs of {args.init}")
        if args.widen_to:
            model = widen_mwcnn(model, tuple(args.widen_to), seed=args.seed)
            log(f"--widen-to: {shipped.config.widths} -> {model.config.widths} (Net2WiderNet)")
        if args.gray and model.config.in_channels != 1:
            model = gray_from_colour(model)
            log(f"--gray: {args.init} converted to a one-channel network (same gray function)")
        if args.colour_planes and model.config.guide_channels == 0:
            model = with_guides(model, PLANES)
            log(f"--colour-planes: {args.init} given {PLANES} zero-weighted guide channels")
    elif args.fold_bn or args.widen_to:
        raise SystemExit("--fold-bn and --widen-to need --init (the model to start from)")
    else:
        model = MWCNN(config)
    return model.to(device, memory_format=torch.channels_last)


def loss_fn(kind: str) -> nn.Module:
    return nn.L1Loss() if kind == "l1" else nn.MSELoss()


class MWCNNTraining:
    """MWCNN's pieces of a run (:func:`training.common.run_training` drives them)."""

    def __init__(self, args: argparse.Namespace, run: RunContext) -> None:
        self.args, self.device, self.np_rng = args, run.device, run.np_rng
        self.model = build_model(args, run.device, run.log)
        self.config = self.model.config
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        self.scheduler = run.schedule.lr_scheduler(self.optimizer, args.warmup, args.min_lr_ratio)
        self.criterion = loss_fn(args.loss)
        self.sampler: PatchSampler | None = None
        self.val_items: list[ValItem] = []

    def describe(self) -> dict[str, Any]:
        return {"config": self.config.to_json(), "task": self.args.task}

    def prepare(self) -> Prepared:
        args, channels = self.args, self.config.in_channels
        images = TrainingImages.load(min_size=args.patch)
        focus = (*args.focus_range, args.focus_prob) if args.focus_range else None
        self.sampler = PatchSampler(images, args.task, args.patch, self.np_rng, args.gray_fraction,
                                    args.clip_prob, focus, channels)
        self.val_items = validation_set(args.task, channels=channels)
        input_scores = {k: round(v, 3) for k, v in input_psnr(self.val_items).items()}
        return Prepared(data=images.describe(),
                        log={"val_items": len(self.val_items), "val_input_psnr": input_scores})

    def train_step(self, step: int) -> dict[str, float]:
        assert self.sampler is not None, "prepare() loads the data"
        batch = self.sampler.sample(self.args.batch)
        inp, target = to_tensor(batch.inputs, self.device), to_tensor(batch.targets, self.device)
        levels = torch.from_numpy(batch.levels).to(self.device)
        with autocast_for(self.device):
            out = self.model(inp, levels)
        loss = self.criterion(out.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": float(loss.detach())}

    def current_lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def validate(self, model: nn.Module) -> Validation:
        scores = validate(model, self.val_items, self.device)
        return Validation(score=scores["all"], scores=scores, log={"psnr": scores})

    def checkpoint_extra(self) -> dict[str, Any]:
        return {}  # model, optimizer and scheduler are all it has, and the skeleton keeps them

    def load_checkpoint_extra(self, extra: Mapping[str, Any]) -> None:
        return None


PLANES = 3  # the opponent planes a --colour-planes network sees


class ColourPlaneTraining(MWCNNTraining):
    """A gray MWCNN with guide channels, trained on the OPPONENT planes of colour patches and
    validated as the service runs it: RGB PSNR of the three planes restored one by one."""

    def prepare(self) -> Prepared:
        args = self.args
        if args.task != "denoise" or not args.gray:
            raise SystemExit("--colour-planes needs --task denoise --gray")
        images = TrainingImages.load(min_size=args.patch, colour_only=True)
        focus = (*args.focus_range, args.focus_prob) if args.focus_range else None
        self.plane_sampler = ColourPlaneSampler(images, args.patch, self.np_rng, OPPONENT,
                                                args.clip_prob, focus, tuple(args.plane_weights))
        if args.chroma_of and args.plane_weights[0] > 0:
            raise SystemExit("--chroma-of trains the chroma planes only: --plane-weights 0 W1 W2")
        self.colour_val = colour_validation_set()
        self.luma_net = frozen_luma_network(args.chroma_of, self.device) if args.chroma_of else None
        return Prepared(data=images.describe(), log={"val_items": len(self.colour_val)})

    def train_step(self, step: int) -> dict[str, float]:
        batch = self.plane_sampler.sample(self.args.batch)
        inp, target = to_tensor(batch.inputs, self.device), to_tensor(batch.targets, self.device)
        guide = to_tensor(batch.guides, self.device)
        levels = torch.from_numpy(batch.levels).to(self.device)
        if self.luma_net is not None:
            luma_levels = torch.from_numpy(batch.luma_levels).to(self.device)
            with torch.no_grad(), autocast_for(self.device):
                luma = self.luma_net(guide[:, :1].contiguous(memory_format=torch.channels_last),
                                     luma_levels, guide)
            guide = cascade_guide(guide, luma)
        with autocast_for(self.device):
            out = self.model(inp, levels, guide)
        loss = self.criterion(out.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": float(loss.detach())}

    def validate(self, model: nn.Module) -> Validation:
        scores = validate_colour_planes(model, self.colour_val, self.device, luma=self.luma_net)
        return Validation(score=scores["all"], scores=scores, log={"psnr": scores})


def frozen_luma_network(path: Path, device: torch.device) -> nn.Module:
    """The colour-plane network whose denoised luminance a chroma network is trained to see."""
    net = load_mwcnn(path).to(device, memory_format=torch.channels_last).eval()
    if net.config.guide_channels != PLANES:
        raise SystemExit(f"--chroma-of {path}: not a colour-plane network (no guide channels)")
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


def colour_validation_set() -> list[tuple[str, float, np.ndarray, np.ndarray]]:
    """(name, σ, noisy RGB float, clean RGB) of the held-out colour images (seeded float noise)."""
    rng = np.random.default_rng(VAL_SEED)
    items = []
    for name, clean in validation_images():
        if clean.ndim != 3:
            continue
        for sigma in VAL_SIGMAS:
            noisy = add_gaussian_noise(clean.astype(np.float32), sigma, rng, clip=False)
            items.append((name, sigma, noisy, clean))
    return items


@torch.no_grad()
def validate_colour_planes(model: nn.Module, items: list[tuple[str, float, np.ndarray, np.ndarray]],
                           device: torch.device, bf16: bool | None = None,
                           luma: nn.Module | None = None) -> dict[str, float]:
    """Mean RGB PSNR (8-bit outputs) overall and per σ, planes restored as the service does
    (``bf16``: None runs as training does, False in fp32); ``luma``: `model` is a chroma
    network, the luminance is ``luma``'s."""
    was_training = model.training
    model.eval()
    scores: dict[str, list[float]] = {}
    for _name, sigma, noisy, clean in items:
        rgb = to_tensor(noisy.transpose(2, 0, 1)[None] / 255.0, device)
        with autocast_for(device, bf16):
            if luma is None:
                out = denoise_planes(model, rgb, sigma, OPPONENT, guided=True)
            else:
                out = denoise_planes(luma, rgb, sigma, OPPONENT, guided=True,
                                     denoise_chroma=model)
        value = psnr(restored_uint8(out)[0].cpu(),
                     torch.from_numpy(clean.transpose(2, 0, 1).astype(np.float32) / 255.0))
        scores.setdefault(f"{sigma:g}", []).append(value)
        scores.setdefault("all", []).append(value)
    model.train(was_training)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    loop = LoopSettings(args.log_every, args.val_every, args.ckpt_minutes, args.max_minutes)
    # "best_psnr": the key of every MWCNN checkpoint so far (runs resume across the change).
    spec = RunSpec.from_args(args, desc=f"mwcnn-{args.task}", loop=loop, best_key="best_psnr")
    trainer = ColourPlaneTraining if args.colour_planes else MWCNNTraining
    run_training(spec, lambda run: trainer(args, run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
