#!/usr/bin/env bash
# Train and release the default offline model in one go: three networks of the CNN recipe, one per seed,
# released as one ensemble checkpoint. The same commands run on a laptop CPU (bf16 where the CPU has it,
# else fp32) or on a GPU (CUDA, fp16 autocast + GradScaler).
# Interrupted? Run it again: each network continues from runs/<name>-s<seed>/last.pt (--resume).
#
#   scripts/train_default_model.sh [DATA] [RUN_PREFIX] [SEEDS]   # defaults: ../shared/fer2013 runs/cnn_default "0 1 2"
#
# Environment: OUT (released file, default assets/emotion_cnn.pt; its report goes to <OUT's folder>/report)
# and TRAIN_ARGS (extra flags for every training run, e.g. "--epochs 40").
#
# With 2+ cores and no GPU, the networks train side by side, one core and one thread each (steadier than
# two runs sharing every core); set PARALLEL=0 to train them one after another with every core.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/fer2013}
PREFIX=${2:-runs/cnn_default}
SEEDS=${3:-0 1 2}
PARALLEL=${PARALLEL:-1}
OUT=${OUT:-assets/emotion_cnn.pt}
read -r -a extra <<< "${TRAIN_ARGS:-}"

cores=$(nproc)
runs=()
pids=()
i=0
for seed in $SEEDS; do
  run="$PREFIX-s$seed"
  runs+=("$run/best.pt")
  mkdir -p "$run"
  if [[ "$PARALLEL" == 1 && "$cores" -ge 2 ]]; then
    taskset -c $((i % cores)) python train_cli.py train --model cnn --data "$DATA" --out "$run" --seed "$seed" --threads 1 --resume \
      "${extra[@]}" > "$run/stdout.log" 2>&1 &
    pids+=($!)
  else
    python train_cli.py train --model cnn --data "$DATA" --out "$run" --seed "$seed" --resume "${extra[@]}"
  fi
  i=$((i + 1))
done
for pid in "${pids[@]}"; do
  wait "$pid" || { echo "a training run failed; see $PREFIX-s*/stdout.log" >&2; exit 1; }
done

# Shipped without test-time augmentation, which keeps the live pipeline within its budget (the model card
# gives the accuracy with --tta flip and shift too); prints the accuracy it records.
python train_cli.py ship "${runs[@]}" --tta none --data "$DATA" --out "$OUT"
python train_cli.py evaluate --checkpoint "$OUT" --data "$DATA" --split test --out "$(dirname "$OUT")/report"
