#!/usr/bin/env bash
# The GPU checks of the analog-training issue, as one script for a machine with a GPU
# (the device tool's nvidia-h200; under 8 minutes there). It installs nothing: that machine
# reaches no registry, and aihwkit, Flower and Ray are not on its image (aihwkit's wheels
# also link a torch other than the image's, and torch itself is far over what may travel),
# so the checks that need them say so instead of running:
#   1. the training benchmark on CUDA: digital, weight-noise and chip-forward training
#      (aihwkit's HWA where aihwkit imports);
#   2. five clients sharing one GPU against the same five trainings one after another
#      (what client-resources-num-gpus=0.2 does, measured without Flower and Ray), for the
#      weight-noise and the chip-forward clients;
#   3. the GPU evaluation next to the CPU one on the default checkpoint (needs aihwkit).
# Run from the repository root: bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
echo "== 1. training step per sample pass on CUDA"
timeout 240 python3 benchmarks/train_speed.py --device cuda --threads 0 --steps 20 --repeats 3
echo "== 2. five clients sharing one GPU"
for model in weight analog; do
    timeout 120 python3 benchmarks/gpu_share.py --device cuda \
        --run-config "training.noise_model='$model' training.use_neg=false"
done
echo "== 3. GPU evaluation next to the CPU one"
if python3 -c "import aihwkit" 2>/dev/null; then
    timeout 120 python3 benchmarks/eval_speed.py --device cuda --repeats 1 --no-round
else
    echo "skipped: aihwkit is not installed here (no registry on this machine)"
fi
