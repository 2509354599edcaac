"""Ship a trained MWCNN: fp16 safetensors (config in its metadata) + provenance JSON beside it;
and the one provenance schema (:class:`Provenance`) that every trainer's export writes.

    python -m training.export --checkpoint runs/mwcnn-denoise/best.pt \\
        --out weights/mwcnn-denoise.safetensors

Before writing, the validation PSNR of the fp32 weights is compared with that of the same
weights rounded to fp16 (both run in fp32); the export fails if the change exceeds
``--max-drop-db`` (0.01 dB by default) or the file would exceed ``--max-mb`` (16 MB).
The written file is read back with :func:`shared.ml.models.mwcnn.load_mwcnn` (strict keys).

ESRGAN (``train_esrgan --export``) and DeepFill (``train_deepfill --export``) ship their own
weights, each with its own checks, and write their provenance through :func:`weights_provenance`
and :func:`write_weights_provenance` here, so every ``weights/*.json`` has the same keys.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from shared.ml.models.mwcnn import (
    MWCNN,
    MWCNNConfig,
    count_parameters,
    load_mwcnn,
    save_mwcnn,
)
from shared.ml.provenance import Provenance, TrainingData
from training.common import (
    configure_threads,
    git_commit,
    load_checkpoint,
    training_lineage,
    write_provenance,
)
from training.data import VALIDATION, validation_set
from training.train_mwcnn import (
    colour_validation_set,
    frozen_luma_network,
    validate,
    validate_colour_planes,
)

LEVEL_MAPS = {
    "denoise": "level = sigma / 255 (sigma on the 0-255 scale, trained range [0, 75])",
    "artifacts": "level = (100 - quality) / 100 (Pillow JPEG quality, trained range [10, 90])",
}


#: Where the training data lives, as every provenance file records it.
DATA_ROOT = "../shared/data/train (see shared/data/SOURCES.md)"


def stored_dtype(path: Path) -> str:
    """The dtypes of a safetensors file's tensors, e.g. "float16" or "float16, float32"."""
    names = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
    with safe_open(str(path), framework="pt") as handle:
        found = {handle.get_slice(key).get_dtype() for key in handle.keys()}  # noqa: SIM118
    return ", ".join(sorted(names.get(d, d.lower()) for d in found))


def weights_provenance(
    out: Path,
    checkpoint: Mapping[str, Any],
    *,
    network: str,
    config: Any,
    parameters: int,
    task: str,
    usage: Mapping[str, str],
    data: TrainingData,
    checks: Mapping[str, Any],
) -> Provenance:
    """The provenance of the weights just written to ``out`` from ``checkpoint`` (a
    :func:`training.common.save_checkpoint` file of :func:`training.common.run_training`)."""
    extra = checkpoint.get("extra", {})
    steps = checkpoint.get("step")
    lineage = training_lineage((extra.get("history") or {}).get("init"), int(steps or 0))
    elapsed = extra.get("elapsed_s")
    return Provenance(
        file=out.name, sha256=sha256_of(out), bytes=out.stat().st_size, dtype=stored_dtype(out),
        network=network, config=config, parameters=parameters, task=task, usage=dict(usage),
        steps=steps, best_step=extra.get("best_step", steps),
        steps_total=lineage["steps_total"], resumed_from=lineage.get("resumed_from"),
        train_hours=None if elapsed is None else round(float(elapsed) / 3600, 3),
        training_args=extra.get("args"), training_history=extra.get("history"),
        validation=extra.get("best_scores"), checks=dict(checks), data=data,
        machine=extra.get("machine"), training_code_commit=extra.get("commit"),
        export_code_commit=git_commit(), checkpoint_saved_at=checkpoint.get("saved_at"),
        exported_at=dt.datetime.now(dt.UTC).isoformat(),
    )


def write_weights_provenance(weights: Path, record: Provenance) -> Path:
    """Write ``record`` beside ``weights`` (same name, ``.json``); return that path."""
    path = weights.with_suffix(".json")
    write_provenance(path, record.to_json())
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-drop-db", type=float, default=0.01)
    p.add_argument("--max-mb", type=float, default=16.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-validation", action="store_true", help="tests only: no data needed")
    return p.parse_args(argv)


def fp16_roundtrip(model: MWCNN) -> MWCNN:
    """A copy whose weights went through fp16 exactly as the shipped file stores them."""
    clone = MWCNN(model.config)
    state = {}
    for key, value in model.state_dict().items():
        keep = not value.is_floating_point() or key.endswith(("running_mean", "running_var"))
        state[key] = value if keep else value.half().float()
    clone.load_state_dict(state, strict=True)
    return clone.eval()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def usage_notes(task: str, in_channels: int, guide_channels: int = 0,
                chroma_of: str | None = None) -> dict[str, str]:
    """How to call a shipped MWCNN: its input, noise/quality level and gray handling."""
    if chroma_of:
        return {"input": "one chroma plane (opponent planes 2 and 3) of a colour photo and, as "
                         "guide channels, the luminance plane denoised by the colour-plane "
                         f"network it was trained with ({Path(chroma_of).name}), then both "
                         "noisy chroma "
                         "planes (colour_planes.cascade_guide)",
                "level_map": LEVEL_MAPS.get(task, "") + ", times the plane's noise gain",
                "gray_handling": "colour photos only, with the colour-plane network; gray "
                                 "photos use the gray network"}
    if guide_channels:
        return {"input": "one opponent plane of a colour photo (float, H and W multiples of 8) "
                         "and, as guide channels, all three noisy planes",
                "level_map": LEVEL_MAPS.get(task, "") + ", times the plane's noise gain",
                "gray_handling": "colour photos only, plane by plane "
                                 "(shared/ml/colour_planes.py); gray photos use the gray network"}
    if in_channels == 1:
        return {"input": "gray float in [0, 1], H and W multiples of 8",
                "level_map": LEVEL_MAPS.get(task, ""),
                "gray_handling": "gray network (one channel), trained on gray patches only; "
                                 "serves black-and-white photos (shared/ml/restorers/mwcnn.py)"}
    return {"input": "RGB float in [0, 1], H and W multiples of 8",
            "level_map": LEVEL_MAPS.get(task, ""),
            "gray_handling": "colour network; gray images replicated to 3 channels, "
                             "output averaged"}


def chroma_of(state: Mapping[str, Any]) -> str | None:
    """The colour-plane weights a chroma network was trained beside (`--chroma-of`), if any."""
    value = state.get("extra", {}).get("args", {}).get("chroma_of")
    return None if value in (None, "None", "") else str(value)


def validation_score(task: str, config: MWCNNConfig,
                     luma_weights: str | None = None) -> Callable[[MWCNN, torch.device], float]:
    """The validation its trainer ran: colour-plane networks are scored on RGB, as served (a
    chroma network beside the luminance of the colour-plane network it was trained with)."""
    if config.guide_channels:
        colour_items = colour_validation_set()
        cpu = torch.device("cpu")
        luma = frozen_luma_network(Path(luma_weights), cpu) if luma_weights else None
        return lambda model, device: validate_colour_planes(model, colour_items, device,
                                                            bf16=False, luma=luma)["all"]
    items = validation_set(task, channels=config.in_channels)
    return lambda model, device: validate(model, items, device, bf16=False)["all"]


def provenance(state: dict[str, Any], model: MWCNN, out: Path,
               checks: dict[str, Any]) -> Provenance:
    extra = state.get("extra", {})
    task = extra.get("task", "unknown")
    return weights_provenance(
        out, state,
        network="MWCNN (Liu et al., CVPRW 2018), see shared/ml/models/mwcnn.py",
        config=model.config.to_json(), parameters=count_parameters(model), task=task,
        usage=usage_notes(task, model.config.in_channels, model.config.guide_channels,
                          chroma_of(state)),
        data=TrainingData(description=extra.get("data"), root=DATA_ROOT,
                          held_out_for_validation=VALIDATION),
        checks=checks,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_threads(args.threads)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    config = MWCNNConfig.from_json(state["extra"]["config"])
    model = MWCNN(config)
    load_checkpoint(args.checkpoint, model=model, restore_rng=False)
    model.eval()
    task = state["extra"].get("task", "denoise")
    device = torch.device("cpu")

    checks: dict[str, Any] = {}
    if luma := chroma_of(state):  # the pair is what was validated: name the other half exactly
        checks["chroma_of"] = {"file": Path(luma).name, "sha256": sha256_of(Path(luma))}
    if not args.skip_validation:
        score = validation_score(task, config, chroma_of(state))
        # fp32 compute on purpose: the check is about the stored precision, not the runtime's.
        fp32 = score(model, device)
        fp16 = score(fp16_roundtrip(model), device)
        change = fp16 - fp32
        checks.update(val_psnr_fp32=fp32, val_psnr_fp16_weights=fp16, change_db=change)
        print(f"validation PSNR fp32 {fp32:.4f} dB, fp16 weights {fp16:.4f} dB, "
              f"change {change:+.4f} dB")
        if abs(change) > args.max_drop_db:
            print(f"FAIL: |change| > {args.max_drop_db} dB", file=sys.stderr)
            return 1

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_mwcnn(model, args.out, metadata={"task": task, "level_map": LEVEL_MAPS.get(task, ""),
                                          "steps": str(state.get("step"))})
    size_mb = args.out.stat().st_size / 1e6
    if size_mb > args.max_mb:
        print(f"FAIL: {args.out} is {size_mb:.1f} MB > {args.max_mb} MB", file=sys.stderr)
        args.out.unlink()
        return 1
    reloaded = load_mwcnn(args.out)  # strict keys: proves the shipped file loads
    checks["reload_strict"] = True
    checks["max_abs_weight_diff_fp16"] = max(
        float((a.float() - b.float()).abs().max())
        for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(), strict=True)
        if a.is_floating_point()
    )
    record = provenance(state, model, args.out, checks)
    json_path = write_weights_provenance(args.out, record)
    print(f"wrote {args.out} ({size_mb:.2f} MB, {record.parameters} params) and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
