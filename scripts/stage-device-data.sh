#!/usr/bin/env bash
# Copy the training images into .device-data/ (git-ignored) for a CUDA machine that cannot see
# ../shared and receives only the checkout, kept small (about 50 MiB by default). Train400 and
# T91 go whole; BSD200 keeps every held-out validation image (MWCNN/DeepFill's and ESRGAN's)
# and as many of the others as the budget allows.
#
#   bash scripts/stage-device-data.sh [MiB for BSD200, default 32]
set -euo pipefail
cd "$(dirname "$0")/.."
source_dir=${RESTORA_DATA:-../shared/data}/train
budget=$(( ${1:-32} * 1024 * 1024 ))
dest=.device-data/train
rm -rf .device-data
mkdir -p "$dest/BSD200"
cp -r "$source_dir/Train400" "$source_dir/T91" "$dest/"

held_out=$(.venv/bin/python - <<'PY'
from training.data import VALIDATION
from training.train_esrgan import VALIDATION_BSD200
print(" ".join(sorted(set(VALIDATION["BSD200"]) | set(VALIDATION_BSD200))))
PY
)
used=0
for name in $held_out; do
    cp "$source_dir/BSD200/$name" "$dest/BSD200/"
    used=$(( used + $(stat -c %s "$source_dir/BSD200/$name") ))
done
for path in "$source_dir"/BSD200/*.png; do
    name=$(basename "$path")
    [ -e "$dest/BSD200/$name" ] && continue
    size=$(stat -c %s "$path")
    (( used + size > budget )) && continue
    cp "$path" "$dest/BSD200/"
    used=$(( used + size ))
done
echo "staged $(ls "$dest/BSD200" | wc -l) of $(ls "$source_dir/BSD200" | wc -l) BSD200 images;" \
     "$(du -sh .device-data | cut -f1) in .device-data"
