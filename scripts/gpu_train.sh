#!/usr/bin/env bash
# Train several networks of the CNN recipe at once on one GPU, in a single call of a rented machine, and
# hand back each network's best checkpoint; the release is then shipped and calibrated on your own machine.
#
# On the GPU machine (its python3 must have torch, numpy and opencv; nothing else of requirements.txt is needed):
#   OUT=/some/folder scripts/gpu_train.sh [DATA] [SEEDS]      # defaults: .data/fer2013 "10 11 12 13 14"
#
# DATA is usually the packed copy of FER2013 (`python train_cli.py pack --out .data/fer2013`). Environment:
#   OUT         where the results go (required): nets-1.tar, nets-2.tar, ... holding cnn-s<seed>.pt per network
#               (its best epoch, int8 weight matrices as `ship --weights int8` stores them, at most 4 a tar so
#               each stays under 16 MiB) and logs.tar.gz (every run's train.log, metrics.jsonl and stdout)
#   TRAIN_ARGS  extra flags for every run (default "--mixup 0.4", network 6's recipe)
#   RESIDUAL    seeds (among SEEDS) that train the residual network (--cnn-block residual); default none
#   VAL_SPLIT   fraction of train every network holds out for validation, the same faces for all
#               (--split-seed SPLIT_SEED, default 0), so `calibrate` can fit on faces none of them saw;
#               0 validates on DATA's test split instead (default 0.1)
#   EPOCHS      epochs of every run (default 60), or "auto": a one-epoch probe of every network on
#               PROBE_IMAGES faces (default 6400), all at once, measures each one's images/s, and each then
#               gets as many epochs (at most EPOCHS_MAX, default 60) as fit the budget left
#   BUDGET_S    seconds the probe and the training may take in all (default 480); runs still going then are
#               stopped and hand back the best epoch they reached, so a call's time limit never loses the results
#   DEVICE      --device of the runs (default auto: CUDA where there is a GPU); cpu for a dry run
#
# Every network trains in its own process; on one GPU they share it, which a batch of 64 faces leaves
# mostly idle, so several run in about the time of one.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-.data/fer2013}
SEEDS=${2:-10 11 12 13 14}
: "${OUT:?set OUT to the folder for the results}"
TRAIN_ARGS=${TRAIN_ARGS:---mixup 0.4}
RESIDUAL=${RESIDUAL:-}
VAL_SPLIT=${VAL_SPLIT:-0.1}
SPLIT_SEED=${SPLIT_SEED:-0}
EPOCHS=${EPOCHS:-60}
EPOCHS_MAX=${EPOCHS_MAX:-60}
PROBE_IMAGES=${PROBE_IMAGES:-6400}
BUDGET_S=${BUDGET_S:-480}
DEVICE=${DEVICE:-auto}
RUNS=${RUNS:-runs/gpu}
read -r -a extra <<< "$TRAIN_ARGS"
start=$(date +%s)

splits=(train)
if python3 -c "import sys; sys.exit(0 if float('$VAL_SPLIT') > 0 else 1)"; then
  extra+=(--val-split "$VAL_SPLIT" --split-seed "$SPLIT_SEED")
else
  splits+=(test)
fi
for split in "${splits[@]}"; do
  if [[ ! -e "$DATA/$split" && ! -f "$DATA/$split.npz" ]]; then
    echo "error: $DATA has no $split split (a $split/ folder or $split.npz); pack it with: python train_cli.py pack --out $DATA" >&2
    exit 2
  fi
done
python3 -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'no cuda', torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
mkdir -p "$OUT" "$RUNS"
threads=$(( $(nproc) / $(wc -w <<< "$SEEDS") ))
(( threads < 1 )) && threads=1

# The flags of one network: its seed, and the residual block if RESIDUAL names it.
network_args() {
  local args=(--seed "$1")
  [[ " $RESIDUAL " == *" $1 "* ]] && args+=(--cnn-block residual)
  echo "${args[@]}"
}

# Start every network with `train_cli.py train ... $2` into RUNS/<prefix>-s<seed>, stopped at $1 seconds;
# the epochs of each come from the function epochs_of. Waits for all; returns 1 if any failed.
train_all() {
  local budget=$1 prefix=$2 pids=() seed code status=0
  shift 2
  for seed in $SEEDS; do
    local run="$RUNS/$prefix-s$seed"
    mkdir -p "$run"
    # shellcheck disable=SC2046
    timeout --signal=INT "$budget" python3 train_cli.py train --model cnn --data "$DATA" --out "$run" \
      $(network_args "$seed") --epochs "$(epochs_of "$seed")" --device "$DEVICE" --threads "$threads" \
      --no-report "${extra[@]}" "$@" > "$run/stdout.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    wait "$pid"
    code=$?
    # 124: stopped by the budget (its best epoch so far is kept); anything else is a failed run.
    if [[ $code != 0 && $code != 124 && $code != 130 ]]; then status=1; fi
  done
  return $status
}

if [[ $EPOCHS == auto ]]; then
  epochs_of() { echo 1; }
  if ! train_all "$BUDGET_S" probe --max-images "$PROBE_IMAGES" --overwrite; then
    echo "error: the probe failed; its logs:" >&2
    tail -n 20 "$RUNS"/probe-s*/stdout.log >&2
    exit 1
  fi
  left=$(( BUDGET_S - ($(date +%s) - start) ))
  # Epochs that fit the time left at the probe's speed, with a sixth kept for validation, checkpoints and start-up.
  declare -A planned
  for seed in $SEEDS; do
    planned[$seed]=$(python3 - "$RUNS/probe-s$seed" "$DATA" "$VAL_SPLIT" "$left" "$EPOCHS_MAX" <<'PY'
import json, sys
from pathlib import Path
from emotion.data.splits import load_split
run, data, val_split, left, cap = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
row = json.loads(Path(run, "metrics.jsonl").read_text().splitlines()[-1])
faces = len(load_split(data, "train")) * (1 - val_split)
print(max(1, min(cap, int(left * 5 / 6 / (faces / row["images_per_s"])))))
PY
)
    echo "probe $seed: $(tail -n 1 "$RUNS/probe-s$seed/metrics.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["images_per_s"])') images/s -> ${planned[$seed]} epochs in ${left}s"
  done
  epochs_of() { echo "${planned[$1]}"; }
else
  epochs_of() { echo "$EPOCHS"; }
fi

left=$(( BUDGET_S - ($(date +%s) - start) ))
train_all "$left" cnn --resume
status=$?

python3 - "$RUNS" "$OUT" $SEEDS <<'PY'
import json, sys, tarfile
from pathlib import Path
from emotion.models.checkpoint import ship_checkpoint
runs, out, seeds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
shipped = []
for seed in seeds:
    run = runs / f"cnn-s{seed}"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (run / "metrics.jsonl").is_file() else []
    if not rows or not (run / "best.pt").is_file():
        print(f"{run}: no finished epoch")
        continue
    best = max(rows, key=lambda r: r["val_acc"])
    print(f"{run}: {len(rows)} epochs, {rows[-1]['images_per_s']} images/s ({rows[-1].get('precision', '?')}), "
          f"best val acc {best['val_acc'] * 100:.2f}% at epoch {best['epoch']}")
    dst = runs / f"cnn-s{seed}.pt"
    ship_checkpoint([run / "best.pt"], dst, tta="flip", weights="int8")  # what ship stores; re-shipping is exact
    shipped.append(dst)
for k in range(0, len(shipped), 4):  # at most 4 networks (about 11 MB) a tar: a returned file may hold 16 MiB
    with tarfile.open(out / f"nets-{k // 4 + 1}.tar", "w") as tar:
        for path in shipped[k : k + 4]:
            tar.add(path, arcname=path.name)
PY
tar -czf "$OUT/logs.tar.gz" -C "$RUNS" $(cd "$RUNS" && ls -d */train.log */metrics.jsonl */stdout.log 2>/dev/null)
ls -la "$OUT"
exit $status
