"""An RRDBNet as ncnn's `.param` + `.bin`, laid out like Real-ESRGAN's official x4plus files.

`benchmarks/speed.py` runs the shipped ESRGAN (32 features × 4 blocks) on ncnn's CPU runtime
through it, beside the official x4plus files; `tests/test_x4plus.py` checks that ncnn runs a
graph written here like the PyTorch module (and reads it back with
:func:`shared.ml.models.esrgan.read_ncnn_rrdbnet`). Only ×4 (no pixel-unshuffle in front).
"""

from __future__ import annotations

from pathlib import Path

from shared.ml.models.esrgan import NCNN_FP16_TAG, RRDBNet, _rrdbnet_convs

_LEAKY = " 9=2 -23310=1,2.000000e-01"
_RESIDUAL = "0=1 -23301=2,2.000000e-01,1.000000e+00"  # Eltwise: 0.2 · a + 1 · b
_NEAREST_X2 = "0=1 1=2.000000e+00 2=2.000000e+00"


class _Graph:
    """An ncnn `.param` graph under construction: every blob is consumed once (Split copies)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.blobs = 0

    def add(self, kind: str, inputs: list[str], outputs: int | list[str] = 1,
            params: str = "") -> list[str]:
        if isinstance(outputs, int):
            outputs = [f"b{self.blobs + i}" for i in range(outputs)]
        self.blobs += len(outputs)
        name = f"{kind.lower()}_{len(self.lines)}"
        self.lines.append(" ".join([kind, name, str(len(inputs)), str(len(outputs)),
                                    *inputs, *outputs, params]).rstrip())
        return outputs

    def copies(self, blob: str, count: int) -> list[str]:
        return self.add("Split", [blob], count) if count > 1 else [blob]

    def text(self) -> str:
        return "\n".join(["7767517", f"{len(self.lines)} {self.blobs}", *self.lines]) + "\n"


def param_text(model: RRDBNet) -> str:
    """The `.param` graph of `model`: input blob `data`, output blob `output`."""
    config = model.config
    if config.scale != 4:
        raise ValueError(f"only a ×4 RRDBNet is written, not ×{config.scale}")
    plan = iter(_rrdbnet_convs(config))
    graph = _Graph()

    def conv(blob: str, output: str | None = None) -> str:
        _, (out, inp), leaky = next(plan)
        params = f"0={out} 1=3 4=1 5=1 6={out * inp * 9}" + (_LEAKY if leaky else "")
        return graph.add("Convolution", [blob], [output] if output else 1, params)[0]

    def dense_block(x: str) -> str:
        x_copies = graph.copies(x, 6)  # five for the convs and concats, one for the skip
        pools = [x_copies[:5]]
        for k in range(1, 6):
            parts = [pool.pop() for pool in pools[:k]]
            y = conv(parts[0] if k == 1 else graph.add("Concat", parts)[0])
            if k < 5:
                pools.append(graph.copies(y, 5 - k))
        return graph.add("Eltwise", [y, x_copies[5]], params=_RESIDUAL)[0]

    graph.blobs = 1
    graph.lines.append("Input input 0 1 data")
    trunk, skip = graph.copies(conv("data"), 2)
    for _ in range(config.blocks):
        inner, outer = graph.copies(trunk, 2)
        inner = dense_block(dense_block(dense_block(inner)))
        trunk = graph.add("Eltwise", [inner, outer], params=_RESIDUAL)[0]
    feat = graph.add("BinaryOp", [skip, conv(trunk)], params="0=0")[0]
    for _ in range(2):
        feat = conv(graph.add("Interp", [feat], params=_NEAREST_X2)[0])
    conv(conv(feat), "output")
    return graph.text()


def bin_bytes(model: RRDBNet, fp16: bool = True) -> bytes:
    """The `.bin` weights of `model`: each conv's tagged weights (fp16 as the official files
    store them, or fp32), then its fp32 bias."""
    sd = model.state_dict()
    chunks = []
    for conv_name, _, _ in _rrdbnet_convs(model.config):
        weight = sd[f"{conv_name}.weight"].flatten()
        if fp16:
            raw = weight.half().numpy().tobytes()
            chunks += [NCNN_FP16_TAG.to_bytes(4, "little"), raw, b"\0" * (-len(raw) % 4)]
        else:
            chunks += [b"\0\0\0\0", weight.float().numpy().tobytes()]
        chunks.append(sd[f"{conv_name}.bias"].float().numpy().tobytes())
    return b"".join(chunks)


def write_ncnn(model: RRDBNet, folder: Path, name: str = "net", fp16: bool = True,
               ) -> tuple[Path, Path]:
    """`model` as `folder/name.param` and `folder/name.bin`; returns both paths."""
    param, weights = folder / f"{name}.param", folder / f"{name}.bin"
    param.write_text(param_text(model))
    weights.write_bytes(bin_bytes(model, fp16))
    return param, weights
