"""Command line for the emotion package (console script `emotion`): train, evaluate, calibrate, predict, ship,
export, bench, video and pack.

    python train_cli.py train    --data ../shared/fer2013 --out runs/clip1
    python train_cli.py evaluate --checkpoint runs/clip1/best.pt --data ../shared/fer2013 --split test --out reports/clip1
    python train_cli.py evaluate --checkpoint assets/emotion_cnn.pt --data ../shared/fer2013 --split test --frames
    python train_cli.py predict  face.jpg other.png [--checkpoint ...] [--json] [--explain OUT_DIR]
    python train_cli.py pack     --data ../shared/fer2013 --out .data/fer2013   # small lossless copy: --data .data/fer2013

Run `python train_cli.py COMMAND --help` for every flag. Multi-process training:
`torchrun --nproc_per_node=N train_cli.py train ...` (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from emotion_cli.flags import (
    add_bench,
    add_calibrate,
    add_evaluate,
    add_export,
    add_pack,
    add_predict,
    add_ship,
    add_video,
)
from emotion_cli.inference_commands import cmd_bench, cmd_export, cmd_predict, cmd_video
from emotion_cli.train_flags import add_train
from emotion_cli.training_commands import cmd_calibrate, cmd_evaluate, cmd_pack, cmd_ship, cmd_train

log = logging.getLogger("emotion.cli")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all sub-commands."""
    parser = argparse.ArgumentParser(
        prog="train_cli.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        add_train,
        add_evaluate,
        add_predict,
        add_ship,
        add_export,
        add_bench,
        add_video,
        add_pack,
        add_calibrate,
    ):
        add(sub)
    return parser


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "ship": cmd_ship,
    "export": cmd_export,
    "bench": cmd_bench,
    "video": cmd_video,
    "pack": cmd_pack,
    "calibrate": cmd_calibrate,
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the sub-command; returns the exit code (2 with a message for bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    from emotion.data.dataset import DataError
    from emotion.models.checkpoint import CheckpointError, CheckpointWriteError
    from emotion.models.weights import WeightsError
    from emotion.training.loop import TrainingDiverged

    try:
        return COMMANDS[args.command](args)
    except (DataError, WeightsError, CheckpointError, FileNotFoundError, ValueError) as exc:
        return _fail(exc, 2)  # bad input: settings, data, checkpoint, an existing run folder
    except (TrainingDiverged, CheckpointWriteError) as exc:
        return _fail(exc, 1)  # the run itself failed; the last good checkpoint is kept
    except KeyboardInterrupt:
        # Ctrl-C, or a time budget's SIGINT (scripts/gpu_train.sh): checkpoints already written stay.
        return _fail(RuntimeError("interrupted; a training run continues from its last.pt with --resume"), 130)


def _fail(exc: BaseException, code: int) -> int:
    """Report ``exc`` as one line (no traceback) and return ``code``."""
    message = " ".join(str(exc).split())
    log.error("%s", message)
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("RANK", "0")) != 0:
        # A torchrun worker other than rank 0 has written everything it owns; skipping interpreter
        # finalization spares it gloo's C++ destructors, which now and then abort (SIGABRT) a finished worker.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
