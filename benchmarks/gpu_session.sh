#!/usr/bin/env bash
# Everything a GPU session should check, in one call (about 6 minutes on an H100/H200; unmeasured so far).
# Before the call, on the developer machine:
#   mkdir -p .data && cp ../shared/data/cifar10/cifar10-jpeg.tar.gz .data/
# then run `bash benchmarks/gpu_session.sh` with carry=[".data"]. Results land in $OUT (or ./gpu-results):
# session.txt (all output) and each run's config.yaml + metrics.jsonl (checkpoints are deleted).
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.txt") 2>&1
DATA=.data/cifar10-jpeg.tar.gz
export PYTHONUNBUFFERED=1 INVASPREAD_CACHE=/tmp/invaspread-cache
python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
python -m pytest -q tests/test_device_augment.py tests/test_loss.py 2>&1 | tail -3
python benchmarks/throughput.py --data "$DATA" --compile
python benchmarks/step_floor.py --data "$DATA" --steps 10 --subset-per-class 500
python benchmarks/methods.py --device cuda --steps 30 --warmup 5
python benchmarks/clustering.py --device cuda
invaspread train --config cifar10 --data-dir "$DATA" --epochs 3 --out "$OUT/gpu-path" --set train.progress=false
invaspread train --config cifar10 --data-dir "$DATA" --epochs 3 --out "$OUT/cpu-path" --set train.progress=false \
    --set augment.on_device=false --set data.num_workers=15
# the methods after the paper (table 1x), one epoch each at their configs' settings (batch 512, ResNet18)
for m in simclr mocov2 byol; do
  invaspread train --config ${m}_cifar10 --data-dir "$DATA" --epochs 1 --out "$OUT/$m" --set train.progress=false
done
rm -f "$OUT"/*/last.pt
