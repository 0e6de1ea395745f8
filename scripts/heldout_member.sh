#!/usr/bin/env bash
# Train one network of the held-out ensemble on this machine and keep it in the repository, so that networks
# trained in separate CPU sessions add up to one release whose temperature can be fitted honestly.
#
#   scripts/heldout_member.sh SEED [DATA]      # DATA default: .data/fer2013 (train_cli.py pack), else ../shared/fer2013
#
# Every network holds out the same 5% of train (--val-split 0.05 --split-seed 0), so no network of the
# ensemble trains on the faces that `calibrate` fits on and that pick each network's best epoch. The recipe
# is the one of docs/frames_benchmark.md's CPU network: 36 epochs, mixup, the app's framings on half of each
# batch (--frame-jitter 0.5). Interrupted? Run it again: training goes on from runs/heldout-s<SEED>/last.pt.
# The network's best epoch is written to OUT_DIR/cnn-s<SEED>.pt (int8 weight matrices, flip TTA, as
# `ship --weights int8` stores them, about 2.7 MB; shipping it again into an ensemble is exact).
#
# Environment: OUT_DIR (default assets/heldout), RUNS (default runs) and TRAIN_ARGS (extra training flags,
# which win over the recipe's, e.g. "--epochs 1 --max-images 64" for a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:?usage: scripts/heldout_member.sh SEED [DATA]}
DATA=${2:-}
if [[ -z "$DATA" ]]; then  # the packed copy when there is one (faster to load), else the shared folder
  DATA=.data/fer2013
  [[ -e "$DATA" ]] || DATA=../shared/fer2013
elif [[ ! -e "$DATA" ]]; then
  echo "error: no dataset at $DATA; give a FER2013 folder or packed copy (python train_cli.py pack --out $DATA)" >&2
  exit 2
fi
OUT_DIR=${OUT_DIR:-assets/heldout}
RUN=${RUNS:-runs}/heldout-s$SEED
read -r -a extra <<< "${TRAIN_ARGS:-}"
mkdir -p "$RUN" "$OUT_DIR"
python train_cli.py train --model cnn --data "$DATA" --out "$RUN" --seed "$SEED" --epochs 36 --mixup 0.4 \
  --frame-jitter 0.5 --val-split 0.05 --split-seed 0 --resume --no-report "${extra[@]}"
# `ship` evaluates the written file on PublicTest and records it in the file; nothing is chosen on it.
python train_cli.py ship "$RUN/best.pt" --tta flip --weights int8 --data "$DATA" --out "$OUT_DIR/cnn-s$SEED.pt"
