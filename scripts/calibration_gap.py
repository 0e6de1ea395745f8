"""How a checkpoint's calibration differs between faces it trained on and faces it never saw.

For a checkpoint trained with ``--val-split F --seed S``: fits a temperature on its truly held-out faces
(the validation carve-out) and one on as many faces of its own training part, and scores each temperature
on both sets (ECE over 15 bins, NLL). Never touches a test split.

    python scripts/calibration_gap.py runs/x/best.pt --data ../shared/fer2013
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emotion.data.dataset import split_train_val
from emotion.data.splits import load_split
from emotion.evaluation.calibration import (
    default_held_out,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from emotion.evaluation.evaluate import predict_dataset
from emotion.inference.classifier import EmotionClassifier
from emotion.models.temperature import apply_temperature


def main() -> int:
    """Print the temperature fitted on seen and on unseen faces, and each one's ECE/NLL on both sets."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint trained with --val-split (its config names the held-out faces)")
    p.add_argument("--data", default="../shared/fer2013", help="the dataset it was trained on")
    p.add_argument("--tta", default=None, help="none, flip or shift (default: the checkpoint's own setting)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    clf = EmotionClassifier.from_checkpoint(a.checkpoint, device="cpu", tta=a.tta)
    held = default_held_out(clf.loaded.train_config, None, None)
    if not held.unseen:
        print(
            "error: this checkpoint was not trained with --val-split; it has no truly unseen training faces",
            file=sys.stderr,
        )
        return 2
    train_part, unseen = split_train_val(load_split(a.data, "train"), held.fraction, held.seed)
    pick = torch.randperm(len(train_part), generator=torch.Generator().manual_seed(held.seed))[: len(unseen)]
    sets = {"seen": train_part.subset(pick.sort().values), "unseen": unseen}
    probs = {name: torch.from_numpy(predict_dataset(clf, ds, calibrated=False)) for name, ds in sets.items()}
    labels = {name: ds.labels.numpy() for name, ds in sets.items()}
    temps = {"1 (raw)": 1.0, **{f"fit on {name}": fit_temperature(probs[name], labels[name]) for name in sets}}
    print(
        f"{clf.name}, tta {clf.tta}: {len(unseen)} unseen faces (val split {held.fraction:g}, seed {held.seed}), "
        f"{len(unseen)} seen faces of its training part"
    )
    for name in sets:
        print(f"accuracy on {name}: {(probs[name].argmax(1).numpy() == labels[name]).mean() * 100:.2f}%")
    print(f"{'temperature':<22}{'T':>8}" + "".join(f"{'ECE ' + n:>13}{'NLL ' + n:>13}" for n in sets))
    for label, t in temps.items():
        row = "".join(
            f"{expected_calibration_error(apply_temperature(probs[n], t), labels[n]):>13.4f}"
            f"{negative_log_likelihood(apply_temperature(probs[n], t), labels[n]):>13.4f}"
            for n in sets
        )
        print(f"{label:<22}{t:>8.4f}{row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
