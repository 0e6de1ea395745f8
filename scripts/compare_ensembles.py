"""Which networks to release together, and with which TTA: accuracy of every subset of trained checkpoints.

Each checkpoint's probabilities on the split are computed once per TTA mode; an ensemble's prediction
is the mean of its members' probabilities (what ``ship`` releases), so every subset is scored from
those without running a network again. Prints a table; the model card's step table comes from it.

The best row of that table is found by looking at the split it is scored on, so its lead is optimistic.
``--holdout N`` measures by how much: N times, the faces are halved at random (per class), the best subset
and TTA mode are picked on one half and scored on the other, each against a baseline without TTA (all the
networks, or ``--baseline``, e.g. the shipped file). ``--sizes`` and ``--tta`` narrow the search.

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

from emotion.data.splits import load_split  # noqa: E402
from emotion.evaluation.evaluate import compute_metrics, predict_dataset  # noqa: E402
from emotion.inference.classifier import TTA_VIEWS, EmotionClassifier  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    """The script's flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="trained checkpoints of one architecture, e.g. runs/*/best.pt")
    p.add_argument("--data", default="../shared/fer2013", help="dataset folder or fer2013.csv")
    p.add_argument("--split", default="test", help="split to score")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--json",
        action="store_true",
        help='print JSON rows instead of a table (with --holdout: {"subsets": rows, "holdout": summary})',
    )
    p.add_argument(
        "--holdout",
        type=int,
        default=0,
        help="also check N random half splits: pick the best row on one half, score it on the other (try 200)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the --holdout halves")
    p.add_argument(
        "--baseline",
        help="--holdout compares with this checkpoint without TTA, e.g. assets/emotion_cnn.pt "
        "(default: the ensemble of every checkpoint given, without TTA)",
    )
    p.add_argument("--sizes", type=int, nargs="+", help="only subsets of these sizes (default: every size)")
    p.add_argument(
        "--tta",
        nargs="+",
        choices=list(TTA_VIEWS),
        default=list(TTA_VIEWS),
        help="only these TTA modes (default: all; shift runs each network 10 times)",
    )
    return p


def _score_subsets(
    probs: dict[tuple[str, str], np.ndarray],
    labels: np.ndarray,
    checkpoints: list[str],
    sizes: list[int],
    modes: list[str],
) -> tuple[list[dict], list[np.ndarray]]:
    """A row (accuracy, macro F1) for every subset of ``checkpoints`` of the given sizes in every TTA mode,
    and which faces each row gets right."""
    rows, correct = [], []
    for size in sizes:
        for subset in itertools.combinations(checkpoints, size):
            for mode in modes:
                preds = np.mean([probs[path, mode] for path in subset], axis=0).argmax(1)
                m = compute_metrics(labels, preds)
                rows.append(
                    {"networks": list(subset), "tta": mode, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
                )
                correct.append(preds == labels)
    return rows, correct


def main(argv: list[str] | None = None) -> int:
    """Score every subset of the checkpoints with every TTA mode; print a table (or JSON rows)."""
    p = _parser()
    a = p.parse_args(argv)
    if a.holdout < 0:
        p.error(f"--holdout must be 0 (off) or a number of half splits, got {a.holdout}")
    sizes = sorted(set(a.sizes or range(1, len(a.checkpoints) + 1)))
    if not all(1 <= k <= len(a.checkpoints) for k in sizes):
        p.error(f"--sizes must lie between 1 and the {len(a.checkpoints)} checkpoints given, got {a.sizes}")

    ds = load_split(a.data, a.split)
    labels = ds.labels.numpy()

    def scored(path: str, mode: str) -> np.ndarray:
        """Probabilities of one checkpoint in one TTA mode, each computed once."""
        if (path, mode) not in probs:
            probs[path, mode] = predict_dataset(EmotionClassifier.from_checkpoint(path, device=a.device, tta=mode), ds)
        return probs[path, mode]

    probs: dict[tuple[str, str], np.ndarray] = {}
    for path in a.checkpoints:
        for mode in a.tta:
            scored(path, mode)
    rows, correct = _score_subsets(probs, labels, a.checkpoints, sizes, a.tta)
    summary = None
    if a.holdout:
        # The default baseline involves no choice: every network given, no TTA. It is also a candidate row: keeping it.
        base = (
            scored(a.baseline, "none")
            if a.baseline
            else np.mean([scored(path, "none") for path in a.checkpoints], axis=0)
        )
        summary = holdout_check(np.array(correct + [base.argmax(1) == labels]), len(correct), labels, a.holdout, a.seed)
    if a.json:
        print(json.dumps({"subsets": rows, "holdout": summary} if summary else rows, indent=1))
        return 0
    print(f"{'networks':<60} {'tta':<6} {'accuracy':>9} {'macro F1':>9}")
    for r in rows:
        print(f"{' + '.join(r['networks']):<60} {r['tta']:<6} {r['accuracy'] * 100:>8.2f}% {r['macro_f1']:>9.4f}")
    if summary:
        print(
            f"\nholdout ({summary['rounds']} half splits): the best row picked on one half leads "
            f"{a.baseline or 'all networks'} without TTA "
            f"by {summary['lead_where_picked'] * 100:+.2f} points there and by {summary['lead_elsewhere'] * 100:+.2f} "
            f"(sd {summary['lead_elsewhere_sd'] * 100:.2f}) on the other half, ahead in {summary['ahead_elsewhere']:.0%} of them"
        )
    return 0


def holdout_check(correct: np.ndarray, baseline: int, labels: np.ndarray, rounds: int, seed: int = 0) -> dict:
    """How much of the best row's lead is selection: ``correct`` (rows, faces) says which faces each row gets right.

    Each round halves the faces at random within each class, picks the row with the best accuracy on one half
    and compares it with row ``baseline`` on both halves. Leads are accuracy differences (0.01 = 1 point)."""
    rng = np.random.default_rng(seed)
    correct = correct.astype(np.float32)
    picked, elsewhere = [], []
    for _ in range(rounds):
        half = np.zeros(len(labels), dtype=bool)
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            half[idx[: len(idx) // 2]] = True
        best = int(correct[:, half].mean(1).argmax())
        picked.append(correct[best, half].mean() - correct[baseline, half].mean())
        elsewhere.append(correct[best, ~half].mean() - correct[baseline, ~half].mean())
    elsewhere_arr = np.array(elsewhere)
    return {
        "rounds": rounds,
        "lead_where_picked": float(np.mean(picked)),
        "lead_elsewhere": float(elsewhere_arr.mean()),
        "lead_elsewhere_sd": float(elsewhere_arr.std()),
        "ahead_elsewhere": float((elsewhere_arr > 0).mean()),
    }


if __name__ == "__main__":
    sys.exit(main())
