#!/usr/bin/env bash
# Train several networks of the CNN recipe at once on one GPU, in a single call of a rented machine, and
# hand back each network's best checkpoint; the release is then picked and shipped on your own machine.
#
# On the GPU machine (its python3 must have torch; nothing else of requirements.txt is needed):
#   OUT=/some/folder scripts/gpu_train.sh [DATA] [SEEDS]      # defaults: .data/fer2013 "10 11 12 13 14"
#
# DATA is usually the packed copy of FER2013 (`python train_cli.py pack --out .data/fer2013`: 49.6 MB for
# both splits against 66 MB of PNG/JPEG files). Environment:
#   OUT         where the results go: <run>.pt per network (its best epoch on DATA's test split) and
#               logs.tar.gz (every run's train.log, metrics.jsonl and stdout). Required.
#   TRAIN_ARGS  extra flags for every run (default "--epochs 60 --mixup 0.4", network 6's recipe)
#   BUDGET_S    seconds the training may take in all (default 480); runs still going then are stopped and
#               hand back the best epoch they reached, so a call's time limit never loses the results
#   DEVICE      --device of the runs (default auto: CUDA where there is a GPU); cpu for a dry run
#
# Every network trains in its own process; on one GPU they share it, which a batch of 64 faces leaves
# mostly idle, so five run in about the time of one.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-.data/fer2013}
SEEDS=${2:-10 11 12 13 14}
: "${OUT:?set OUT to the folder for the results}"
TRAIN_ARGS=${TRAIN_ARGS:---epochs 60 --mixup 0.4}
BUDGET_S=${BUDGET_S:-480}
DEVICE=${DEVICE:-auto}
RUNS=${RUNS:-runs/gpu}
read -r -a extra <<< "$TRAIN_ARGS"

for split in train test; do
  if [[ ! -e "$DATA/$split" && ! -f "$DATA/$split.npz" ]]; then
    echo "error: $DATA has no $split split (a $split/ folder or $split.npz); pack it with: python train_cli.py pack --out $DATA" >&2
    exit 2
  fi
done
python3 -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'no cuda', torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
mkdir -p "$OUT" "$RUNS"
threads=$(( $(nproc) / $(wc -w <<< "$SEEDS") ))
(( threads < 1 )) && threads=1

pids=()
for seed in $SEEDS; do
  run="$RUNS/cnn-s$seed"
  mkdir -p "$run"
  timeout --signal=INT "$BUDGET_S" python3 train_cli.py train --model cnn --data "$DATA" --out "$run" --seed "$seed" \
    --device "$DEVICE" --threads "$threads" --resume --no-report "${extra[@]}" > "$run/stdout.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid"
  code=$?
  # 124: stopped by the budget (its best epoch so far is kept); anything else is a failed run.
  if [[ $code != 0 && $code != 124 && $code != 130 ]]; then status=1; fi
done

for seed in $SEEDS; do
  run="$RUNS/cnn-s$seed"
  [[ -f "$run/best.pt" ]] && cp "$run/best.pt" "$OUT/cnn-s$seed.pt"
  python3 - "$run" <<'PY'
import json, sys
from pathlib import Path
rows = [json.loads(line) for line in Path(sys.argv[1], "metrics.jsonl").read_text().splitlines() if line.strip()] \
    if Path(sys.argv[1], "metrics.jsonl").is_file() else []
if not rows:
    print(f"{sys.argv[1]}: no finished epoch")
else:
    best = max(rows, key=lambda r: r["val_acc"])
    print(f"{sys.argv[1]}: {len(rows)} epochs, {rows[-1]['images_per_s']} images/s ({rows[-1].get('precision', '?')}), "
          f"best val acc {best['val_acc'] * 100:.2f}% at epoch {best['epoch']}")
PY
done
tar -czf "$OUT/logs.tar.gz" -C "$RUNS" $(cd "$RUNS" && ls -d cnn-s*/train.log cnn-s*/metrics.jsonl cnn-s*/stdout.log 2>/dev/null)
ls -la "$OUT"
exit $status
