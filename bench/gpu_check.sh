#!/usr/bin/env bash
# The GPU checks, in one short run on a machine with CUDA (the device machine or your own):
# the CUDA paths (training with bf16 autocast and channels-last, batched augmentation on the
# GPU equal to the CPU's, side-stream prefetch), then training throughput at paper scale
# (real loader vs model only; fp32, bf16, bf16 + channels-last), then at demo scale.
# Usage: bash bench/gpu_check.sh [OUTDIR] [--compile]   (--compile: also time torch.compile
# at paper scale, last, for at most 4 minutes; whatever finishes is kept)
set -u
out=${1:-${OUT:-.}}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_data.py -k cuda 2>&1 | tail -3
python3 bench/train.py --scale paper --batch 8 --steps 10 --workers 8 2>&1 | tee "$out/bench_train_paper.txt"
python3 bench/train.py --scale demo --steps 10 2>&1 | tee "$out/bench_train_demo.txt"
python3 bench/train.py --scale demo --steps 10 --workers 2 2>&1 | tee "$out/bench_train_demo_w2.txt"
if [ "${2:-}" = "--compile" ]; then
  timeout 240 python3 bench/train.py --scale paper --batch 8 --steps 10 --workers 8 --compile \
      --only bf16+cl+compile 2>&1 | tee "$out/bench_train_paper_compile.txt"
fi
