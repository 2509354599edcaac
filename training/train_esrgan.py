"""Train ESRGAN's RRDBNet ×4: stage `psnr` (L1) and stage `gan` (the paper's GAN fine-tune).

    python -m training.train_esrgan --stage psnr --run-dir runs/esrgan-psnr \
        --features 32 --blocks 4 --steps 3000 --batch 16 --lr-patch 32 --threads 1
    python -m training.train_esrgan --stage gan --run-dir runs/esrgan-gan \
        --init runs/esrgan-psnr/best_model.pth --steps 2000 ...
    python -m training.train_esrgan --stage psnr --run-dir runs/esrgan-psnr \
        --export-only weights/esrgan-psnr.safetensors

Data: HR crops from T91 + BSD200 (the classic "291" set); 10 BSD200 images are held out for
validation. LR is MATLAB-bicubic ×4 (`training.matlab_resize`, bit-exact to the benchmark LR
files). The psnr stage downsizes every full training image once and cuts aligned LR/HR crops,
exactly the benchmark's input convention. The gan stage degrades each HR crop on the fly
(`training.sr_degradations`: blur, ×4 downscale, noise, JPEG; a share stays clean).

Losses.
- psnr: L1, Adam(β=0.9, 0.99), linear warm-up then cosine decay.
- gan (paper, section 3 and 4.1): L_G = λ_percep·L_percep + 5e-3·L_RaGAN + 1e-2·L1, with the
  relativistic average discriminator (D estimates whether real is more realistic than the
  average fake, and vice versa) and the paper's VGG-style discriminator on 128² crops.

Perceptual-loss stand-in. The paper's L_percep compares VGG19 conv5_4 features *before*
activation; no pretrained VGG can be downloaded here and one trained from scratch on 291
images would not be a perceptual metric. We use Lap1 instead (Bojanowski et al., "Optimizing
the Latent Space of Generative Networks", 2018): an L1 distance between the bands of a fixed
5-level Laplacian pyramid. It is fixed (cannot be gamed by the generator), weights each
frequency band equally instead of letting the large low-frequency error dominate as plain L1
does, so high-frequency detail carries real weight, and it was shown to give sharper results
than pixel losses. It is no substitute for VGG's texture tolerance: the adversarial term has to
provide that, so expect the GAN weights to be less photo-realistic than the paper's.

Runtime. The shared trainer skeleton (`training.common.run_training`): channels-last, CUDA
when present, bf16 autocast only where `shared.ml.accel` says the hardware does it natively;
resumable atomic checkpoints (`last.pt`, after every validation), the best validation model as a
bare state dict (`best_model.pth`; the gan stage keeps its latest), progress bar, `train.log`
with JSON lines. `--hours` bounds the run by wall-clock: the cosine schedule then follows
max(step/steps, elapsed/hours), so a run on a slower or busier machine still decays its
learning rate fully before its deadline.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor, nn

from shared.ml.accel import autocast_for
from shared.ml.models.esrgan import (
    RRDBNet,
    config_metadata,
    init_rrdbnet_,
    load_rrdbnet,
)
from shared.ml.provenance import TrainingData
from training.common import (
    REPO_ROOT,
    LoopSettings,
    Prepared,
    RunContext,
    RunSpec,
    Validation,
    configure_threads,
    cosine_factor,
    export_fp16_safetensors,
    git_commit,
    run_training,
)
from training.degradations import rgb_to_y
from training.export import DATA_ROOT, weights_provenance, write_weights_provenance
from training.matlab_resize import imresize
from training.sr_degradations import DegradationConfig, degrade

SCALE = 4
# 10 of the 200 BSD200 images held out for validation: every 20th of the sorted names, listed
# so that a subset of the folder (a GPU machine's carried copy) holds out the same ones.
VALIDATION_BSD200 = ("100075.png", "12074.png", "151087.png", "176035.png", "198023.png",
                     "232038.png", "268002.png", "317080.png", "376020.png", "65010.png")
SHAVE = 4
MAX_WEIGHTS_BYTES = 16 * 1024 * 1024
MAX_FP16_DROP_DB = 0.01

Image8 = NDArray[np.uint8]


# --------------------------------------------------------------------------- data


def load_rgb(path: Path) -> Image8:
    return np.asarray(Image.open(path).convert("RGB"))


def crop_to_multiple(img: Image8, m: int = SCALE) -> Image8:
    return img[: img.shape[0] // m * m, : img.shape[1] // m * m]


def load_sets(data: Path) -> tuple[list[Path], list[Path]]:
    """(train paths, validation paths): T91 + BSD200 minus the held-out BSD200 images."""
    t91 = sorted((data / "train" / "T91").glob("*.png"))
    bsd = sorted((data / "train" / "BSD200").glob("*.png"))
    if not t91 or not bsd:
        raise FileNotFoundError(f"T91/BSD200 not found under {data / 'train'}")
    val = [p for p in bsd if p.name in VALIDATION_BSD200]
    train = t91 + [p for p in bsd if p.name not in VALIDATION_BSD200]
    return train, val


def augment(pair: tuple[Image8, Image8], rng: np.random.Generator) -> tuple[Image8, Image8]:
    """Random flips and 90° rotation, the same on LR and HR."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = []
    for img in pair:
        img = np.rot90(img, k)
        out.append(np.ascontiguousarray(img[:, ::-1] if flip else img))
    return out[0], out[1]


def to_batch(images: list[Image8], device: torch.device) -> Tensor:
    arr = np.stack(images).astype(np.float32) / 255.0
    t = torch.from_numpy(arr).permute(0, 3, 1, 2)
    return t.to(device).contiguous(memory_format=torch.channels_last)


class BicubicPairs:
    """Aligned (LR, HR) crops of images downsized once with MATLAB bicubic (psnr stage)."""

    def __init__(self, paths: list[Path], lr_patch: int) -> None:
        self.lr_patch = lr_patch
        self.hr: list[Image8] = []
        self.lr: list[Image8] = []
        for path in paths:
            hr = crop_to_multiple(load_rgb(path))
            if min(hr.shape[:2]) >= lr_patch * SCALE:
                self.hr.append(hr)
                self.lr.append(imresize(hr, 1 / SCALE))
        # Sample images in proportion to their area, so every HR pixel is equally likely.
        area = np.array([h.shape[0] * h.shape[1] for h in self.hr], dtype=np.float64)
        self.weights = area / area.sum()

    def sample(self, rng: np.random.Generator) -> tuple[Image8, Image8]:
        i = int(rng.choice(len(self.hr), p=self.weights))
        lr, hr, p = self.lr[i], self.hr[i], self.lr_patch
        y = int(rng.integers(lr.shape[0] - p + 1))
        x = int(rng.integers(lr.shape[1] - p + 1))
        lr_crop = lr[y : y + p, x : x + p]
        hr_crop = hr[y * SCALE : (y + p) * SCALE, x * SCALE : (x + p) * SCALE]
        return augment((lr_crop, hr_crop), rng)


class DegradedPairs(BicubicPairs):
    """HR crops degraded on the fly into realistic LR (gan stage)."""

    def __init__(self, paths: list[Path], lr_patch: int, cfg: DegradationConfig) -> None:
        super().__init__(paths, lr_patch)
        self.cfg = cfg

    def sample(self, rng: np.random.Generator) -> tuple[Image8, Image8]:
        _, hr = super().sample(rng)  # aligned crop + augmentation; LR rebuilt below
        return degrade(hr, rng, self.cfg), hr


def batches(
    pairs: BicubicPairs, batch: int, rng: np.random.Generator, device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        samples = [pairs.sample(rng) for _ in range(batch)]
        yield to_batch([s[0] for s in samples], device), to_batch([s[1] for s in samples], device)


# --------------------------------------------------------------------------- validation


@dataclass
class ValSet:
    lr: list[Image8]
    hr: list[Image8]
    bicubic_psnr: float


def psnr_y(sr: Image8, hr: Image8, shave: int = SHAVE) -> float:
    """SOURCES.md recipe: float Y (not rounded), `shave` px border removed."""
    a = rgb_to_y(sr)[shave:-shave, shave:-shave]
    b = rgb_to_y(hr)[shave:-shave, shave:-shave]
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def make_valset(paths: list[Path]) -> ValSet:
    hrs = [crop_to_multiple(load_rgb(p)) for p in paths]
    lrs = [imresize(hr, 1 / SCALE) for hr in hrs]
    bicubic = [psnr_y(imresize(lr, SCALE), hr) for lr, hr in zip(lrs, hrs, strict=True)]
    return ValSet(lrs, hrs, float(np.mean(bicubic)))


@torch.inference_mode()
def validate(model: nn.Module, val: ValSet, device: torch.device) -> float:
    model.eval()
    scores = []
    for lr, hr in zip(val.lr, val.hr, strict=True):
        with autocast_for(device):
            out = model(to_batch([lr], device))
        sr = out.float().clamp(0, 1).mul(255).round().byte()[0].permute(1, 2, 0).cpu().numpy()
        scores.append(psnr_y(sr, hr))
    model.train()
    return float(np.mean(scores))


# --------------------------------------------------------------------------- GAN parts


class VGGStyleDiscriminator(nn.Module):
    """The paper's discriminator for 128² crops: 10 convs (3×3 then 4×4 stride 2, five times,
    64→512 channels, BN after all but the first, LeakyReLU 0.2), then 100-unit dense, 1 logit."""

    def __init__(self, in_channels: int = 3, features: int = 64, size: int = 128) -> None:
        super().__init__()
        chans = [features, features * 2, features * 4, features * 8, features * 8]
        layers: list[nn.Module] = []
        prev = in_channels
        for i, c in enumerate(chans):
            layers += [nn.Conv2d(prev, c, 3, 1, 1, bias=i == 0)]
            if i > 0:
                layers += [nn.BatchNorm2d(c, affine=True)]
            layers += [nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(c, c, 4, 2, 1, bias=False)]
            layers += [nn.BatchNorm2d(c, affine=True), nn.LeakyReLU(0.2, inplace=True)]
            prev = c
        self.features = nn.Sequential(*layers)
        side = size // 32
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(prev * side * side, 100), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(100, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def ragan_losses(real_logit: Tensor, fake_logit: Tensor, for_generator: bool) -> Tensor:
    """Relativistic average GAN loss (ESRGAN eq. 1-2): D_Ra(a, b) = σ(C(a) − E[C(b)])."""
    real_rel = real_logit - fake_logit.mean()
    fake_rel = fake_logit - real_logit.mean()
    real_target, fake_target = (0.0, 1.0) if for_generator else (1.0, 0.0)
    bce = F.binary_cross_entropy_with_logits
    return 0.5 * (
        bce(real_rel, torch.full_like(real_rel, real_target))
        + bce(fake_rel, torch.full_like(fake_rel, fake_target))
    )


class LaplacianPyramidL1(nn.Module):
    """Lap1: mean L1 over the bands of a fixed Laplacian pyramid (the VGG-loss stand-in)."""

    def __init__(self, levels: int = 5) -> None:
        super().__init__()
        k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
        self.register_buffer("kernel", (k1[:, None] * k1[None, :])[None, None], persistent=False)
        self.levels = levels

    def _blur(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        k = self.kernel.to(x.dtype).expand(c, 1, 5, 5)
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k, groups=c)

    def _pyramid(self, x: Tensor) -> list[Tensor]:
        bands = []
        for _ in range(self.levels - 1):
            low = self._blur(x)
            bands.append(x - low)
            x = F.avg_pool2d(low, 2)
        return [*bands, x]

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        pairs = zip(self._pyramid(sr), self._pyramid(hr), strict=True)
        return sum((F.l1_loss(a, b) for a, b in pairs), start=sr.new_zeros(()))


# --------------------------------------------------------------------------- training


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train ESRGAN RRDBNet ×4 (psnr or gan stage).")
    p.add_argument("--stage", choices=("psnr", "gan"), required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--blocks", type=int, default=23)
    p.add_argument("--growth", type=int, default=32)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--hours", type=float, default=0.0, help="wall-clock budget (0: none)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr-patch", type=int, default=32, help="LR crop side (HR = 4×)")
    p.add_argument("--lr", type=float, default=None, help="default 2e-4 psnr, 1e-4 gan")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init", type=Path, default=None, help="generator weights to start from")
    p.add_argument("--d-features", type=int, default=64, help="discriminator base width")
    p.add_argument("--w-pixel", type=float, default=1e-2, help="gan stage L1 weight")
    p.add_argument("--w-gan", type=float, default=5e-3)
    p.add_argument("--w-percep", type=float, default=1.0, help="Lap1 stand-in weight")
    p.add_argument("--export", type=Path, default=None, help="fp16 safetensors path at the end")
    p.add_argument("--export-only", type=Path, default=None, help="export and exit")
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = 2e-4 if args.stage == "psnr" else 1e-4
    if args.stage == "gan" and args.init is None and not (args.resume or args.export_only):
        p.error("--stage gan needs --init (the PSNR-stage weights) or --resume")
    return args


def build_generator(args: argparse.Namespace, device: torch.device) -> RRDBNet:
    if args.init is not None:
        model = load_rrdbnet(args.init).train()
    else:
        model = init_rrdbnet_(RRDBNet(3, 3, args.features, args.blocks, args.growth, SCALE))
    return model.to(device).to(memory_format=torch.channels_last)


def set_lr(optimizers: list[torch.optim.Optimizer], base_lr: float, frac: float,
           args: argparse.Namespace) -> float:
    lr = base_lr * cosine_factor(int(frac * args.steps), args.steps, args.warmup)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr
    return lr


def data_description(stage: str) -> str:
    """What the run trains on, as its checkpoints and provenance record it."""
    return ("T91 + BSD200 ('291') minus 10 held-out BSD200 images (every 20th, sorted);"
            " LR by MATLAB-bicubic x4"
            + ("; realistic degradations (training/sr_degradations.py)" if stage == "gan" else ""))


class ESRGANTraining:
    """ESRGAN's pieces of a run, either stage (:func:`training.common.run_training` drives
    them). It sets its learning rate itself, before each step (``set_lr``), rather than through
    a scheduler: the shipped runs were trained so, and a resume must continue them exactly."""

    scheduler = None

    def __init__(self, args: argparse.Namespace, run: RunContext) -> None:
        self.args, self.device, self.rng, self.schedule = args, run.device, run.np_rng, run.schedule
        self.model = build_generator(args, self.device)
        betas = (0.9, 0.99)
        self.optimizer = torch.optim.Adam(self.model.parameters(), args.lr, betas=betas)
        self.disc: VGGStyleDiscriminator | None = None
        self.opt_d: torch.optim.Optimizer | None = None
        self.lap1: LaplacianPyramidL1 | None = None
        if args.stage == "gan":
            self.disc = VGGStyleDiscriminator(3, args.d_features, args.lr_patch * SCALE)
            self.disc = self.disc.to(self.device).to(memory_format=torch.channels_last)
            self.opt_d = torch.optim.Adam(self.disc.parameters(), args.lr, betas=betas)
            self.lap1 = LaplacianPyramidL1().to(self.device)
        self.optimizers: list[torch.optim.Optimizer] = [
            o for o in (self.optimizer, self.opt_d) if o is not None]
        self.lr = float("nan")
        self.last_losses: dict[str, float] = {}  # the val line repeats the last step's losses
        self.bicubic_psnr = float("nan")
        self.data: Iterator[tuple[Tensor, Tensor]] | None = None
        self.val: ValSet | None = None

    def describe(self) -> dict[str, Any]:
        return {"config": dataclasses.asdict(self.model.config), "stage": self.args.stage}

    def prepare(self) -> Prepared:
        args = self.args
        train_paths, val_paths = load_sets(args.data)
        pairs = (BicubicPairs(train_paths, args.lr_patch) if args.stage == "psnr" else
                 DegradedPairs(train_paths, args.lr_patch, DegradationConfig()))
        self.val = make_valset(val_paths)
        self.bicubic_psnr = self.val.bicubic_psnr
        self.data = batches(pairs, args.batch, self.rng, self.device)
        return Prepared(data=data_description(args.stage),
                        log={"train_images": len(pairs.hr), "val_images": len(self.val.hr),
                             "bicubic_val_psnr": round(self.bicubic_psnr, 3)})

    def train_step(self, step: int) -> dict[str, float]:
        assert self.data is not None, "prepare() loads the data"
        self.lr = set_lr(self.optimizers, self.args.lr, self.schedule.fraction(step), self.args)
        step_fn = self.psnr_step if self.args.stage == "psnr" else self.gan_step
        self.last_losses = step_fn(*next(self.data))
        return self.last_losses

    def current_lr(self) -> float:
        return self.lr

    def validate(self, model: nn.Module) -> Validation:
        assert self.val is not None, "prepare() loads the data"
        value = validate(model, self.val, self.device)
        return Validation(
            score=value,
            scores={"psnr_y_shave4": round(value, 4),
                    "bicubic_psnr_y_shave4": round(self.bicubic_psnr, 3)},
            log={"val_psnr": round(value, 3), "bicubic": round(self.bicubic_psnr, 3),
                 "lr": self.lr, "elapsed_h": round(self.schedule.elapsed_s() / 3600, 3),
                 **{k: round(v, 5) for k, v in self.last_losses.items()}})

    def checkpoint_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"bicubic_psnr": self.bicubic_psnr}
        if self.disc is not None and self.opt_d is not None:
            extra["disc"] = self.disc.state_dict()
            extra["opt_d"] = self.opt_d.state_dict()
        return extra

    def load_checkpoint_extra(self, extra: dict[str, Any]) -> None:
        upgrade_checkpoint_extra(extra)
        if self.disc is not None and self.opt_d is not None:
            self.disc.load_state_dict(extra["disc"])
            self.opt_d.load_state_dict(extra["opt_d"])

    # ---- steps

    def psnr_step(self, lr_img: Tensor, hr_img: Tensor) -> dict[str, float]:
        with autocast_for(self.device):
            sr = self.model(lr_img)
        loss = F.l1_loss(sr.float(), hr_img)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"l1": loss.item()}

    def gan_step(self, lr_img: Tensor, hr_img: Tensor) -> dict[str, float]:
        assert self.disc is not None and self.opt_d is not None and self.lap1 is not None
        # Generator: pixel + perceptual stand-in + relativistic adversarial.
        self.disc.requires_grad_(False)
        with autocast_for(self.device):
            sr = self.model(lr_img).float()
            real_logit = self.disc(hr_img).float().detach()
            fake_logit = self.disc(sr).float()
        l_pix = F.l1_loss(sr, hr_img)
        l_percep = self.lap1(sr, hr_img)
        l_gan = ragan_losses(real_logit, fake_logit, for_generator=True)
        a = self.args
        loss_g = a.w_pixel * l_pix + a.w_percep * l_percep + a.w_gan * l_gan
        self.optimizer.zero_grad(set_to_none=True)
        loss_g.backward()
        self.optimizer.step()
        # Discriminator on the same batch (fake detached).
        self.disc.requires_grad_(True)
        with autocast_for(self.device):
            real_logit = self.disc(hr_img).float()
            fake_logit = self.disc(sr.detach()).float()
        loss_d = ragan_losses(real_logit, fake_logit, for_generator=False)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        return {"l1": l_pix.item(), "lap1": l_percep.item(), "g_gan": l_gan.item(),
                "d": loss_d.item()}


def upgrade_checkpoint_extra(extra: dict[str, Any]) -> None:
    """Bring a ``last.pt`` written before the shared skeleton up to date, in place: it kept
    step, clock, best score and bicubic baseline in ``extra["state"]``."""
    state = extra.get("state")
    if state is None or "elapsed_s" in extra:
        return
    extra.update(best_psnr=state["best_psnr"], best_step=state["best_step"],
                 elapsed_s=state["elapsed"], bicubic_psnr=state["bicubic_psnr"])


def run_spec(args: argparse.Namespace) -> RunSpec:
    """ESRGAN's rhythm: a train and a val line, and a resumable checkpoint, every
    ``--val-every`` steps (it has no ``--log-every`` or ``--ckpt-minutes``)."""
    loop = LoopSettings(log_every=args.val_every, val_every=args.val_every,
                        ckpt_minutes=math.inf, checkpoint_on_validation=True,
                        validate_on_stop=True)
    return RunSpec.from_args(args, desc=f"esrgan-{args.stage}", loop=loop, best_key="best_psnr",
                             best_name="best_model.pth", best_weights_only=True,
                             latest_is_best=args.stage == "gan")


# --------------------------------------------------------------------------- export


def export(args: argparse.Namespace, path: Path | None = None) -> Path:
    """best_model.pth (+ progress from last.pt) -> fp16 safetensors with config metadata and a
    provenance JSON beside it."""
    path = path or args.export
    assert path is not None
    model = load_rrdbnet(args.run_dir / "best_model.pth")
    checkpoint = torch.load(args.run_dir / "last.pt", map_location="cpu", weights_only=False)
    extra = checkpoint["extra"]
    upgrade_checkpoint_extra(extra)
    metadata = {**config_metadata(model.config), "stage": args.stage, "commit": git_commit(),
                "steps": str(checkpoint["step"]), "val_psnr_y": f"{extra['best_psnr']:.3f}"}
    size = export_fp16_safetensors(model.state_dict(), path, metadata)
    if size > MAX_WEIGHTS_BYTES:
        raise RuntimeError(f"{path} is {size} bytes, over the 16 MB limit")
    shipped = load_rrdbnet(path)  # the shipped file must load back through the public loader
    assert shipped.config == model.config
    # fp16 storage must not cost accuracy: compare validation PSNR of both (run in fp32).
    configure_threads(args.threads)
    _, val_paths = load_sets(args.data)
    val = make_valset(val_paths)
    psnr32, psnr16 = (validate(m, val, torch.device("cpu")) for m in (model, shipped))
    if abs(psnr32 - psnr16) > MAX_FP16_DROP_DB:
        raise RuntimeError(f"fp16 weights change val PSNR by {psnr16 - psnr32:+.4f} dB")
    record = weights_provenance(
        path, checkpoint,
        network=f"ESRGAN RRDBNet x4 ({args.stage} stage; Wang et al., ECCVW 2018), see "
                "shared/ml/models/esrgan.py",
        config=dataclasses.asdict(model.config),
        parameters=sum(p.numel() for p in model.parameters()), task="superres",
        usage={"input": "RGB float in [0, 1], any size; output 4x larger"},
        data=TrainingData(description=extra.get("data") or data_description(args.stage),
                          root=DATA_ROOT, held_out_for_validation=[p.name for p in val_paths]),
        checks={"val_psnr_y_shave4": round(psnr32, 4),
                "val_psnr_y_shave4_fp16_weights": round(psnr16, 4),
                "change_db": round(psnr16 - psnr32, 4), "reload_strict": True},
    )
    write_weights_provenance(path, record)
    print(f"exported {path} ({size} bytes)")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.export_only is not None:
        export(args, args.export_only)
        return 0
    result = run_training(run_spec(args), lambda run: ESRGANTraining(args, run))
    if args.export is not None and not result.stopped:
        export(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
