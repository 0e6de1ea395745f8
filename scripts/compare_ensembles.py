"""Which networks to release together, and with which TTA: accuracy of every subset of trained checkpoints.

Each checkpoint's probabilities on the split are computed once per TTA mode; an ensemble's prediction
is the mean of its members' probabilities (what ``ship`` releases), so every subset is scored from
those without running a network again. Prints a table; the model card's step table comes from it.

    python scripts/compare_ensembles.py runs/a/best.pt runs/b/best.pt runs/c/best.pt --data ../shared/fer2013
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emotion.data import load_split  # noqa: E402
from emotion.evaluate import compute_metrics, predict_dataset  # noqa: E402
from emotion.predict import TTA_VIEWS, EmotionClassifier  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Score every subset of the checkpoints with every TTA mode; print a table (or JSON rows)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="trained checkpoints of one architecture, e.g. runs/*/best.pt")
    p.add_argument("--data", default="../shared/fer2013", help="dataset folder or fer2013.csv")
    p.add_argument("--split", default="test", help="split to score")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    a = p.parse_args(argv)

    ds = load_split(a.data, a.split)
    labels = ds.labels.numpy()
    probs = {(path, mode): predict_dataset(EmotionClassifier.from_checkpoint(path, device=a.device, tta=mode), ds)
             for path in a.checkpoints for mode in TTA_VIEWS}
    rows = []
    for size in range(1, len(a.checkpoints) + 1):
        for subset in itertools.combinations(a.checkpoints, size):
            for mode in TTA_VIEWS:
                mean = np.mean([probs[path, mode] for path in subset], axis=0)
                m = compute_metrics(labels, mean.argmax(1))
                rows.append({"networks": list(subset), "tta": mode, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]})
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'networks':<60} {'tta':<6} {'accuracy':>9} {'macro F1':>9}")
    for r in rows:
        print(f"{' + '.join(r['networks']):<60} {r['tta']:<6} {r['accuracy'] * 100:>8.2f}% {r['macro_f1']:>9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
