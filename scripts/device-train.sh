#!/usr/bin/env bash
# Train networks on a CUDA machine for a few minutes, all at once on its one GPU, and write
# their fp16 weights to $OUT (default runs/device-out), with their provenance JSONs and logs in
# one tarball. First copy the training images into the checkout, for a machine that cannot
# see ../shared:
#
#   bash scripts/stage-device-data.sh
#
# then, on the CUDA machine, with .device-data/ copied along with the checkout:
#
#   bash scripts/device-train.sh 7 mwcnn-denoise mwcnn-denoise-gray mwcnn-artifacts esrgan-psnr deepfill
#
# The first argument is the training time in minutes. Copy what comes back into weights/ after
# checking its numbers (`make bench-quality`); set INIT_DIR=weights to start from the shipped
# weights instead of from scratch (the widths must then match theirs). Needs only torch, numpy,
# Pillow, SciPy, OpenCV and tqdm in the machine's python3 ($PYTHON), so nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=$1
shift
out=${OUT:-runs/device-out}
work=runs/device-work
mkdir -p "$out" "$work"
export RESTORA_DATA=$PWD/.device-data PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
hours=$("$python" -c "print($minutes / 60)")
init() { [ -n "${INIT_DIR:-}" ] && [ -f "$INIT_DIR/$1.safetensors" ] && echo "--init $INIT_DIR/$1.safetensors"; true; }

# Widths sized for a GPU and the 16 MB fp16 budget per network (MWCNN 64/128/128 ≈ 7.6 MB,
# RRDBNet 64 × 8 blocks ≈ 12 MB, DeepFill at the paper's cnum 32 ≈ 6 MB).
train() {
    local name=$1 run=runs/device-$1
    case $name in
        mwcnn-denoise | mwcnn-artifacts | mwcnn-denoise-gray)
            local task=${name#mwcnn-} gray=""
            [ "$task" = denoise-gray ] && task=denoise gray=--gray
            "$python" -m training.train_mwcnn --task "$task" $gray --run-dir "$run" --width 64 \
                --steps 100000 --hours "$hours" --batch 32 --patch 96 --lr 1e-3 --warmup 500 \
                --val-every 2000 --log-every 200 --threads 2 --ema 0.999 $(init "$name")
            "$python" -m training.export --checkpoint "$run/best.pt" --out "$work/$name.safetensors" ;;
        esrgan-psnr)
            "$python" -m training.train_esrgan --stage psnr --run-dir "$run" --data "$RESTORA_DATA" \
                --features 64 --blocks 8 --batch 16 --lr-patch 48 --lr 4e-4 --steps 100000 \
                --hours "$hours" --val-every 1000 --threads 2 --export "$work/$name.safetensors" \
                $(init "$name") ;;
        deepfill)
            # From shipped weights: widened to cnum 32 (Net2WiderNet), whatever their width, and
            # a fresh refinement stage (the shipped one collapsed; see docs/training.md).
            local start shape="--width 32"; start=$(init deepfill-contextual-attention)
            [ -n "$start" ] && shape="$start --widen-to 32 --fresh-refinement"
            "$python" -m training.train_deepfill --run-dir "$run" --batch 16 --size 256 $shape \
                --prefill telea --output residual --hole-loss l2 --gamma 1 --known-weight 0 \
                --contour-masks 0.5 --val-contour \
                --ema 0.999 --lr 2e-4 --steps 100000 --hours "$hours" --val-every 1000 \
                --log-every 100 --threads 2
            "$python" -m training.train_deepfill --run-dir "$run" \
                --export "$work/deepfill-contextual-attention.safetensors" ;;
        *) echo "unknown network $name" >&2; return 2 ;;
    esac
    cp "$run/train.log" "$work/$name.log"
}

pids=()
for name in "$@"; do
    train "$name" > "$work/$name.out" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
tail -n 3 "$work"/*.out
cp "$work"/*.safetensors "$out/" 2>/dev/null || true
tar -czf "$out/provenance-and-logs.tar.gz" -C "$work" $(cd "$work" && ls *.json *.log *.out 2>/dev/null)
exit $status
