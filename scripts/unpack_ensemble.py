"""Unpack a shipped ensemble into one checkpoint per network, so a release can be recombined with new networks.

Each network is written to ``OUT/<its run's folder name>/best.pt`` (the run ``ship`` recorded for it,
e.g. ``runs/cnn_s1/best.pt`` becomes ``OUT/cnn_s1/best.pt``), with its own training config and metrics;
``train_cli.py ship`` then takes these files like any trained checkpoint. The weights are the release's,
widened to float32; ``ship`` narrows its matrices to the same float16 values again.

    python scripts/unpack_ensemble.py assets/emotion_cnn.pt --out runs/released
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emotion.models.checkpoint import CheckpointError, load_checkpoint, member_network, save_checkpoint  # noqa: E402
from emotion.models.networks import member_config  # noqa: E402


def unpack(path: str | Path, out: str | Path) -> list[Path]:
    """Write every network of the checkpoint at ``path`` as its own checkpoint under ``out``; returns their paths."""
    loaded = load_checkpoint(path)  # validated once, NaN weights refused
    metrics, configs = _per_network(loaded.metrics), _per_network(loaded.train_config)
    written = []
    for i in range(1, loaded.config.members + 1):
        own_metrics = dict(metrics[i - 1]) if i <= len(metrics) and isinstance(metrics[i - 1], dict) else {}
        source = str(own_metrics.pop("checkpoint", f"network{i}/best.pt"))
        # The run's folder name, and nothing of the recorded path beyond it: the file is not trusted to choose where to write.
        name = Path(source).parent.name
        if name in ("", ".", ".."):
            name = f"network{i}"
        dst = Path(out) / name / "best.pt"
        if dst in written:
            dst = Path(out) / f"{name}-network{i}" / "best.pt"
        train_config = configs[i - 1] if i <= len(configs) and isinstance(configs[i - 1], dict) else {}
        save_checkpoint(
            dst,
            member_network(loaded, i - 1),
            member_config(loaded.config, i - 1),
            train_config=train_config,
            metrics=own_metrics,
        )
        written.append(dst)
    return written


def _per_network(entry: dict) -> list:
    """A checkpoint's metrics or training config per network: the "members" list of an ensemble's, else the
    entry itself (anything malformed counts as absent: the weights are what matters)."""
    members = entry.get("members")
    return members if isinstance(members, list) else [entry]


def main(argv: list[str] | None = None) -> int:
    """Unpack the checkpoint named on the command line; print the files written."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a shipped checkpoint, e.g. assets/emotion_cnn.pt")
    p.add_argument("--out", default="runs/released", help="folder for one <run>/best.pt per network")
    a = p.parse_args(argv)
    try:
        for path in unpack(a.checkpoint, a.out):
            print(path)
    except (CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
