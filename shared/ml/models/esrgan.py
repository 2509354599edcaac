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
A fourth layout is ncnn's (`.param` graph + `.bin` weights, as Real-ESRGAN's official models
ship for ncnn): :func:`read_ncnn_rrdbnet` parses both files with no ncnn code.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.ml.accel import full_precision

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
        feat = full_precision(self.conv_first, x)
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
    three known key layouts, or an ncnn `.param` path (its `.bin` beside it). Raises
    `UnrecognizedCheckpointError` on anything else."""
    metadata: dict[str, str] = {}
    if isinstance(source, str | Path) and Path(source).suffix == ".param":
        sd, config = read_ncnn_rrdbnet(source, Path(source).with_suffix(".bin"))
        return _strict_model(sd, config)
    if isinstance(source, str | Path):
        source, metadata = read_checkpoint(source)
    sd, config, _ = convert_state_dict(source)
    if CONFIG_METADATA_KEY in metadata:
        stated = RRDBNetConfig(**json.loads(metadata[CONFIG_METADATA_KEY]))
        if stated != config:
            raise UnrecognizedCheckpointError(f"metadata says {stated}, shapes say {config}")
    return _strict_model(sd, config)


def _strict_model(sd: Mapping[str, Tensor], config: RRDBNetConfig) -> RRDBNet:
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


# ---------------------------------------------------------------------------------------------
# ncnn's layout: a `.param` text graph and a `.bin` of raw weights (Real-ESRGAN's ncnn models)

NCNN_MAGIC = 7767517
NCNN_FP16_TAG = 0x01306B47  # a weight blob stored as fp16, padded to 4 bytes
_NCNN_FP32_TAG = 0  # a weight blob stored as raw fp32
_NCNN_LEAKY_RELU = 2  # Convolution's fused activation (param 9); its slope is param -23310
_NCNN_LAYERS = {"Input", "Convolution", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"}
# Convolution params: 0 out, 1 kernel, 2 dilation, 3 stride, 4 pad, 5 bias, 6 weight count,
# 9 + -23310 activation; 11-16 the kernel-height/dilation/stride/pad variants of 1-4.
_NCNN_CONV_PARAMS = {"0", "1", "2", "3", "4", "5", "6", "9", "-23310",
                     "11", "12", "13", "14", "15", "16"}
_NCNN_SQUARE = {"11": "1", "12": "2", "13": "3", "14": "4", "15": "4", "16": "4"}


class ChecksumMismatchError(ValueError):
    """A weights file whose sha256 is not the pinned one."""


@dataclass(frozen=True)
class NcnnLayer:
    """One line of an ncnn `.param` file: type, name, bottom and top blobs, `k=v` params."""

    kind: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[str, str] = field(default_factory=dict)

    def number(self, key: str, default: float) -> float:
        return float(self.params[key]) if key in self.params else default


def parse_ncnn_param(text: str) -> list[NcnnLayer]:
    """The layers of an ncnn `.param` file (the text format: magic, counts, one layer a line)."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if not rows or rows[0] != [str(NCNN_MAGIC)]:
        raise UnrecognizedCheckpointError(f"not an ncnn .param file (magic {NCNN_MAGIC} missing)")
    layers: list[NcnnLayer] = []
    try:
        layer_count = int(rows[1][0])
        for tokens in rows[2:]:
            n_in, n_out = int(tokens[2]), int(tokens[3])
            blobs = tokens[4 : 4 + n_in + n_out]
            if len(blobs) != n_in + n_out:
                raise ValueError(f"layer {tokens[1]} lists too few blobs")
            params = dict(t.split("=", 1) for t in tokens[4 + n_in + n_out :])
            layers.append(NcnnLayer(tokens[0], tokens[1], tuple(blobs[:n_in]),
                                    tuple(blobs[n_in:]), params))
    except (IndexError, ValueError) as err:
        raise UnrecognizedCheckpointError(f"malformed ncnn .param file: {err}") from None
    if len(layers) != layer_count:
        raise UnrecognizedCheckpointError(
            f"ncnn .param says {layer_count} layers, lists {len(layers)}")
    return layers


def _rrdbnet_convs(config: RRDBNetConfig) -> list[tuple[str, tuple[int, int], bool]]:
    """(name, (out, in) channels, LeakyReLU after it) of every conv, in the forward order."""
    f, g = config.features, config.growth
    first_in = config.in_channels * _UNSHUFFLE[config.scale] ** 2
    convs = [("conv_first", (f, first_in), False)]
    for block in range(config.blocks):
        for rdb in (1, 2, 3):
            for k in range(1, 6):
                out = f if k == 5 else g
                convs.append((f"body.{block}.rdb{rdb}.conv{k}", (out, f + (k - 1) * g), k < 5))
    convs += [("conv_body", (f, f), False), ("conv_up1", (f, f), True),
              ("conv_up2", (f, f), True), ("conv_hr", (f, f), True),
              ("conv_last", (config.out_channels, f), False)]
    return convs


def _ncnn_config(layers: list[NcnnLayer]) -> RRDBNetConfig:
    kinds = {layer.kind for layer in layers}
    if kinds - _NCNN_LAYERS:
        raise UnrecognizedCheckpointError(
            f"ncnn graph has layers an RRDBNet does not: {sorted(kinds - _NCNN_LAYERS)}")
    convs = [layer for layer in layers if layer.kind == "Convolution"]
    blocks, rest = divmod(len(convs) - 6, 15)
    if blocks < 1 or rest:
        raise UnrecognizedCheckpointError(
            f"{len(convs)} convolutions is not 6 + 15 per RRDB block")
    features = int(convs[0].number("0", 0))
    growth = int(convs[1].number("0", 0))
    out_channels = int(convs[-1].number("0", 0))
    first_in = int(convs[0].number("6", 0)) // max(1, features * 9)
    scale = {out_channels * u * u: s for s, u in _UNSHUFFLE.items()}.get(first_in)
    if scale != 4:  # the pixel-unshuffle of ×2/×1 would be more layers than this reader knows
        raise UnrecognizedCheckpointError(
            f"ncnn RRDBNet conv_first takes {first_in} channels for {out_channels} out; "
            "only ×4 is read")
    return RRDBNetConfig(out_channels, out_channels, features, blocks, growth, scale)


def _check_ncnn_graph(layers: list[NcnnLayer], config: RRDBNetConfig) -> None:
    """Each conv is the 3×3, stride 1, pad 1, biased conv RRDBNet has at that place (with the
    LeakyReLU(0.2) fused exactly where RRDBNet applies one); the two upsamplings are nearest ×2."""
    convs = [layer for layer in layers if layer.kind == "Convolution"]
    for layer, (name, (out, inp), leaky) in zip(convs, _rrdbnet_convs(config), strict=True):
        expected = {"0": out, "1": 3, "2": 1, "3": 1, "4": 1, "5": 1, "6": out * inp * 9}
        for key, value in expected.items():
            default = 1 if key in ("2", "3") else 0
            if layer.number(key, default) != value:
                raise UnrecognizedCheckpointError(
                    f"ncnn layer {layer.name} ({name}): param {key}={layer.params.get(key)}, "
                    f"RRDBNet {config} needs {value}")
        unknown = set(layer.params) - _NCNN_CONV_PARAMS
        if unknown:
            raise UnrecognizedCheckpointError(
                f"ncnn layer {layer.name}: params {sorted(unknown)} (int8, dynamic weights...)")
        for key, same_as in _NCNN_SQUARE.items():  # the height/bottom/right variants
            if key in layer.params and layer.number(key, 0) != expected[same_as]:
                raise UnrecognizedCheckpointError(f"ncnn layer {layer.name}: non-square {key}")
        activation = int(layer.number("9", 0))
        slope = layer.params.get("-23310", "").split(",")
        if leaky != (activation == _NCNN_LEAKY_RELU) or (leaky and float(slope[-1]) != _SLOPE):
            raise UnrecognizedCheckpointError(
                f"ncnn layer {layer.name} ({name}): activation {activation} {slope}, "
                f"RRDBNet has {'LeakyReLU(0.2)' if leaky else 'none'}")
        if activation not in (0, _NCNN_LEAKY_RELU):
            raise UnrecognizedCheckpointError(f"ncnn layer {layer.name}: activation {activation}")
    ups = [layer for layer in layers if layer.kind == "Interp"]
    nearest_x2 = all(
        layer.number("0", 0) == 1 and layer.number("1", 1) == 2 and layer.number("2", 1) == 2
        for layer in ups)
    if len(ups) != 2 or not nearest_x2:
        raise UnrecognizedCheckpointError("ncnn graph lacks RRDBNet's two nearest ×2 upsamplings")


def _ncnn_weight(data: bytes, offset: int, count: int, name: str) -> tuple[Tensor, int]:
    """One tagged weight blob of an ncnn `.bin` at `offset`: (tensor, offset after it)."""
    tag = int.from_bytes(data[offset : offset + 4], "little")
    offset += 4
    dtype: np.dtype[np.floating]
    if tag == NCNN_FP16_TAG:
        dtype, size = np.dtype("<f2"), (2 * count + 3) // 4 * 4
    elif tag == _NCNN_FP32_TAG:
        dtype, size = np.dtype("<f4"), 4 * count
    else:
        raise UnrecognizedCheckpointError(
            f"ncnn weights of {name} are stored as tag {tag:#010x}: only fp16 and fp32 are read")
    if offset + size > len(data):
        raise UnrecognizedCheckpointError(f"ncnn .bin ends inside the weights of {name}")
    array = np.frombuffer(data, dtype, count, offset)
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="))), offset + size


def read_ncnn_rrdbnet(
    param: str | Path, weights: str | Path, *, bin_sha256: str | None = None
) -> tuple[dict[str, Tensor], RRDBNetConfig]:
    """An ncnn RRDBNet (`.param` graph, `.bin` weights) as (state dict in our naming, config).

    Sizes come from the layers (features from the first conv, growth from the second, blocks
    from the conv count, channels from the first and last); every conv is checked against the
    RRDBNet of that config in order. Tensors keep the stored precision (fp16 weights, fp32
    biases in Real-ESRGAN's files). The `.bin` must be consumed exactly; with `bin_sha256` its
    digest must match (else :class:`ChecksumMismatchError`).
    """
    layers = parse_ncnn_param(Path(param).read_text())
    data = Path(weights).read_bytes()
    if bin_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != bin_sha256:
            raise ChecksumMismatchError(
                f"{Path(weights).name} has sha256 {digest}, not the pinned {bin_sha256}")
    config = _ncnn_config(layers)
    _check_ncnn_graph(layers, config)
    sd: dict[str, Tensor] = {}
    offset = 0
    for name, (out, inp), _ in _rrdbnet_convs(config):
        weight, offset = _ncnn_weight(data, offset, out * inp * 9, name)
        if offset + 4 * out > len(data):
            raise UnrecognizedCheckpointError(f"ncnn .bin ends inside the bias of {name}")
        bias = np.frombuffer(data, np.dtype("<f4"), out, offset)
        offset += 4 * out
        sd[f"{name}.weight"] = weight.reshape(out, inp, 3, 3)
        sd[f"{name}.bias"] = torch.from_numpy(bias.astype(np.float32))
    if offset != len(data):
        raise UnrecognizedCheckpointError(
            f"ncnn .bin holds {len(data)} bytes, the {config} layers use {offset}")
    return sd, config


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
