"""ESRGAN's generator, RRDBNet (Wang et al., "ESRGAN: Enhanced Super-Resolution Generative
Adversarial Networks", ECCV Workshops 2018), and a loader for published checkpoints.

The network is the paper's: a first conv, a trunk of residual-in-residual dense blocks (RRDB:
three dense blocks of five 3×3 convs, growth `growth`, LeakyReLU(0.2), residual scaling 0.2, no
batch norm), a trunk conv with a long skip, two nearest-neighbour ×2 upsamplings each followed
by a conv and LeakyReLU, an HR conv with LeakyReLU and a last conv. Input and output are RGB in
[0, 1].

Scale 4 is the paper's. Scales 2 and 1 follow BasicSR/Real-ESRGAN: the input is first
pixel-unshuffled by 2 or 4, so the same ×4 body then gives ×2 or ×1.

Parameter names are BasicSR's (`conv_first`, `body.N.rdb1.conv1`, `conv_body`, `conv_up1`,
`conv_up2`, `conv_hr`, `conv_last`), the most widespread naming today. `load_rrdbnet` also reads
the two older layouts (the 2018 sequential `model.N…sub` one and the ESRGAN repository's
`RRDB_trunk` one), infers width, depth, growth and scale from tensor shapes and loads strictly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_RES_SCALE = 0.2
_SLOPE = 0.2
_UNSHUFFLE = {4: 1, 2: 2, 1: 4}  # scale -> pixel-unshuffle factor in front of the ×4 body
CONFIG_METADATA_KEY = "rrdbnet_config"


class UnrecognizedCheckpointError(ValueError):
    """A state dict whose key layout or shapes are not an RRDBNet this module knows."""


@dataclass(frozen=True)
class RRDBNetConfig:
    in_channels: int = 3
    out_channels: int = 3
    features: int = 64
    blocks: int = 23
    growth: int = 32
    scale: int = 4


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3×3 convs; the fifth maps back to `features` (no activation)."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, growth, 3, 1, 1)
        self.conv2 = nn.Conv2d(features + growth, growth, 3, 1, 1)
        self.conv3 = nn.Conv2d(features + 2 * growth, growth, 3, 1, 1)
        self.conv4 = nn.Conv2d(features + 3 * growth, growth, 3, 1, 1)
        self.conv5 = nn.Conv2d(features + 4 * growth, features, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x1 = F.leaky_relu(self.conv1(x), _SLOPE)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), _SLOPE)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), _SLOPE)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), _SLOPE)
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x + _RES_SCALE * x5


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks inside a scaled skip."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(features, growth)
        self.rdb2 = ResidualDenseBlock(features, growth)
        self.rdb3 = ResidualDenseBlock(features, growth)

    def forward(self, x: Tensor) -> Tensor:
        return x + _RES_SCALE * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        features: int = 64,
        blocks: int = 23,
        growth: int = 32,
        scale: int = 4,
    ) -> None:
        super().__init__()
        if scale not in _UNSHUFFLE:
            raise ValueError(f"RRDBNet scale must be one of {sorted(_UNSHUFFLE)}, got {scale}")
        self.config = RRDBNetConfig(in_channels, out_channels, features, blocks, growth, scale)
        self._unshuffle = _UNSHUFFLE[scale]
        first_in = in_channels * self._unshuffle**2
        self.conv_first = nn.Conv2d(first_in, features, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(features, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_hr = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_last = nn.Conv2d(features, out_channels, 3, 1, 1)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: Tensor) -> Tensor:
        if self._unshuffle > 1:
            x = F.pixel_unshuffle(x, self._unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(
            self.conv_up1(F.interpolate(feat, scale_factor=2.0, mode="nearest")), _SLOPE
        )
        feat = F.leaky_relu(
            self.conv_up2(F.interpolate(feat, scale_factor=2.0, mode="nearest")), _SLOPE
        )
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), _SLOPE))


def init_rrdbnet_(model: RRDBNet, dense_scale: float = 0.1) -> RRDBNet:
    """Kaiming init of the dense-block convs scaled down by 0.1 (as in the ESRGAN/BasicSR code;
    the other convs keep PyTorch's default): keeps the deep residual trunk near identity at the
    start, which is what makes it trainable without batch norm."""
    for module in model.body.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, a=0.0, mode="fan_in")
            module.weight.data.mul_(dense_scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


# ---------------------------------------------------------------------------------------------
# Checkpoint layouts


_OLD_TAIL = {  # 2018 sequential layout -> ours (×4 only; the trunk conv index is `blocks`)
    "model.0": "conv_first",
    "model.3": "conv_up1",
    "model.6": "conv_up2",
    "model.8": "conv_hr",
    "model.10": "conv_last",
}
_ESRGAN_TAIL = {
    "conv_first": "conv_first",
    "trunk_conv": "conv_body",
    "upconv1": "conv_up1",
    "upconv2": "conv_up2",
    "HRconv": "conv_hr",
    "conv_last": "conv_last",
}
_OLD_RDB = re.compile(r"^model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)$")
_OLD_TRUNK = re.compile(r"^model\.1\.sub\.(\d+)\.(weight|bias)$")
_OLD_TAIL_RE = re.compile(r"^(model\.(?:0|3|6|8|10))\.(weight|bias)$")
_ESRGAN_RDB = re.compile(r"^RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\.(weight|bias)$")
_ESRGAN_TAIL_RE = re.compile(
    r"^(conv_first|trunk_conv|upconv1|upconv2|HRconv|conv_last)\.(weight|bias)$"
)


def _unknown(sd: Mapping[str, Tensor], why: str) -> UnrecognizedCheckpointError:
    sample = ", ".join(sorted(sd)[:6])
    return UnrecognizedCheckpointError(
        f"not an RRDBNet checkpoint this loader knows ({why}); {len(sd)} keys, e.g. {sample}"
    )


def detect_layout(sd: Mapping[str, Tensor]) -> str:
    """'sequential2018', 'esrgan' or 'basicsr' (our own naming), from the keys alone."""
    keys = set(sd)
    if "model.0.weight" in keys and any(k.startswith("model.1.sub.") for k in keys):
        return "sequential2018"
    if "conv_first.weight" in keys and any(k.startswith("RRDB_trunk.") for k in keys):
        return "esrgan"
    if "conv_first.weight" in keys and any(k.startswith("body.") for k in keys):
        return "basicsr"
    raise _unknown(sd, "no known key layout")


def _convert_sequential2018(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    trunk_ids = {int(m.group(1)) for k in sd if (m := _OLD_TRUNK.match(k))}
    if len(trunk_ids) != 1:
        raise _unknown(sd, f"expected one trunk conv under model.1.sub, found {sorted(trunk_ids)}")
    blocks = trunk_ids.pop()
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if m := _OLD_RDB.match(key):
            block, rdb, conv, kind = m.groups()
            if int(block) >= blocks:
                raise _unknown(sd, f"dense block {block} after the trunk conv {blocks}")
            out[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif m := _OLD_TRUNK.match(key):
            out[f"conv_body.{m.group(2)}"] = value
        elif m := _OLD_TAIL_RE.match(key):
            out[f"{_OLD_TAIL[m.group(1)]}.{m.group(2)}"] = value
        else:
            raise _unknown(sd, f"unexpected key {key!r} in the 2018 sequential layout")
    return out


def _convert_esrgan(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if m := _ESRGAN_RDB.match(key):
            block, rdb, conv, kind = m.groups()
            out[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif m := _ESRGAN_TAIL_RE.match(key):
            out[f"{_ESRGAN_TAIL[m.group(1)]}.{m.group(2)}"] = value
        else:
            raise _unknown(sd, f"unexpected key {key!r} in the ESRGAN layout")
    return out


def _infer_config(sd: Mapping[str, Tensor]) -> RRDBNetConfig:
    """Width, depth, growth and scale from tensor shapes (our key naming)."""
    try:
        first = sd["conv_first.weight"]
        last = sd["conv_last.weight"]
        dense = sd["body.0.rdb1.conv1.weight"]
    except KeyError as err:
        raise _unknown(sd, f"missing {err.args[0]}") from None
    features, first_in = int(first.shape[0]), int(first.shape[1])
    out_channels = int(last.shape[0])
    ids = {k.split(".")[1] for k in sd if k.startswith("body.")}
    if not all(i.isdigit() for i in ids):
        raise _unknown(sd, "body.* keys are not numbered RRDB blocks")
    blocks = 1 + max(int(i) for i in ids)
    growth = int(dense.shape[0])
    # Input channels are not stored apart from the unshuffle factor: assume in == out (RGB->RGB
    # or gray->gray), as every published RRDBNet does.
    scale = {out_channels * u * u: s for s, u in _UNSHUFFLE.items()}.get(first_in)
    if scale is None:
        raise _unknown(sd, f"conv_first takes {first_in} channels for {out_channels} out")
    return RRDBNetConfig(out_channels, out_channels, features, blocks, growth, scale)


def unwrap_checkpoint(obj: object) -> dict[str, Tensor]:
    """The tensor dict inside a checkpoint: BasicSR wraps it in `params_ema` (preferred, the
    EMA weights are the ones published) or `params`; DataParallel adds `module.`."""
    if isinstance(obj, Mapping):
        for wrapper in ("params_ema", "params"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise UnrecognizedCheckpointError(f"checkpoint is not a state dict: {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise UnrecognizedCheckpointError(f"checkpoint holds non-tensor entries, e.g. {bad[:3]}")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


def convert_state_dict(obj: object) -> tuple[dict[str, Tensor], RRDBNetConfig, str]:
    """Any known layout -> (state dict in our naming, inferred config, layout name)."""
    sd = unwrap_checkpoint(obj)
    layout = detect_layout(sd)
    if layout == "sequential2018":
        sd = _convert_sequential2018(sd)
    elif layout == "esrgan":
        sd = _convert_esrgan(sd)
    config = _infer_config(sd)
    if layout != "basicsr" and config.scale != 4:
        raise _unknown(sd, f"the {layout} layout is ×4 only, shapes say ×{config.scale}")
    return sd, config, layout


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and (safetensors) metadata of a `.pth`/`.pt` or `.safetensors` file; pickles are
    opened with `weights_only=True` so a checkpoint cannot run code."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
    return torch.load(path, map_location="cpu", weights_only=True), {}


def load_rrdbnet(source: object) -> RRDBNet:
    """An RRDBNet (eval mode, fp32, CPU) from a state dict or a checkpoint path in any of the
    three known key layouts. Raises `UnrecognizedCheckpointError` on anything else."""
    metadata: dict[str, str] = {}
    if isinstance(source, str | Path):
        source, metadata = read_checkpoint(source)
    sd, config, _ = convert_state_dict(source)
    if CONFIG_METADATA_KEY in metadata:
        stated = RRDBNetConfig(**json.loads(metadata[CONFIG_METADATA_KEY]))
        if stated != config:
            raise UnrecognizedCheckpointError(f"metadata says {stated}, shapes say {config}")
    model = RRDBNet(**asdict(config))
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except RuntimeError as err:
        raise UnrecognizedCheckpointError(f"RRDBNet {config} does not fit: {err}") from None
    return model.eval()


def config_metadata(config: RRDBNetConfig) -> dict[str, str]:
    """safetensors metadata entry that our shipped weights carry."""
    return {CONFIG_METADATA_KEY: json.dumps(asdict(config), sort_keys=True)}


def to_layout(sd: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Our state dict renamed to one of the published layouts (for exporting and for tests)."""
    if layout == "basicsr":
        return dict(sd)
    blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
    inverse = {v: k for k, v in (_ESRGAN_TAIL if layout == "esrgan" else _OLD_TAIL).items()}
    if layout == "sequential2018":
        inverse["conv_body"] = f"model.1.sub.{blocks}"
    elif layout != "esrgan":
        raise ValueError(f"unknown layout {layout!r}")
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        head, _, kind = key.rpartition(".")
        if key.startswith("body."):
            _, block, rdb, conv = head.split(".")
            if layout == "esrgan":
                out[f"RRDB_trunk.{block}.{rdb.upper()}.{conv}.{kind}"] = value
            else:
                out[f"model.1.sub.{block}.{rdb.upper()}.{conv}.0.{kind}"] = value
        else:
            out[f"{inverse[head]}.{kind}"] = value
    return out


def interpolate_state_dicts(
    psnr_sd: Mapping[str, Tensor], gan_sd: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """The paper's network interpolation: (1 - alpha)·PSNR + alpha·GAN, parameter by parameter.
    alpha is the `strength` (0 = PSNR-oriented, 1 = full GAN)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {alpha}")
    if set(psnr_sd) != set(gan_sd):
        raise ValueError("PSNR and GAN state dicts have different keys")
    out: dict[str, Tensor] = {}
    for key, p in psnr_sd.items():
        g = gan_sd[key]
        if p.shape != g.shape:
            raise ValueError(f"{key}: shapes differ, {tuple(p.shape)} vs {tuple(g.shape)}")
        if alpha == 0.0:
            out[key] = p.clone()
        elif alpha == 1.0:
            out[key] = g.clone()
        else:
            out[key] = torch.lerp(p.float(), g.float(), alpha).to(p.dtype)
    return out
