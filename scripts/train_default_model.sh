#!/usr/bin/env bash
# Train and release the default offline model in one go: the same commands run on a laptop CPU
# (bf16 where the CPU has it, else fp32) or on a GPU (CUDA, fp16 autocast + GradScaler).
# Interrupted? Run it again: training continues from runs/<name>/last.pt (--resume).
#
#   scripts/train_default_model.sh [DATA] [RUN_DIR]      # defaults: ../shared/fer2013 runs/cnn_default
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/fer2013}
RUN=${2:-runs/cnn_default}
python train_cli.py train --model cnn --data "$DATA" --out "$RUN" --resume
# Shipped without test-time augmentation, which keeps the live pipeline within its budget (the model card
# gives the accuracy with --tta flip and shift too); prints the accuracy it records.
python train_cli.py ship "$RUN/best.pt" --tta none --data "$DATA" --out assets/emotion_cnn.pt
python train_cli.py evaluate --checkpoint assets/emotion_cnn.pt --data "$DATA" --split test --out assets/report
