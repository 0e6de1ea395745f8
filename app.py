"""Real-time facial emotion recognition in the browser: `python app.py`, then open http://127.0.0.1:7860.

Tabs: Live (webcam), Upload (a photo) and Training (train a model from a dataset folder and watch it).
The app listens on localhost only and creates no public link unless --host / --share say otherwise.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from emotion.app import AppConfig, EmotionApp


def build_parser() -> argparse.ArgumentParser:
    """The command line; defaults come from AppConfig."""
    d = AppConfig()
    p = argparse.ArgumentParser(prog="app.py", description=__doc__)
    p.add_argument(
        "--host",
        default=d.host,
        help="address to listen on (default %(default)s); 0.0.0.0 exposes the app to your network",
    )
    p.add_argument("--port", type=int, default=d.port, help="port to listen on (default %(default)s)")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="emotion model checkpoint (default: $EMOTION_CHECKPOINT or assets/emotion_cnn.pt)",
    )
    p.add_argument(
        "--face-model",
        type=Path,
        default=None,
        help="MediaPipe face detector .tflite (or env EMOTION_FACE_MODEL); default: cache, download, Haar fallback",
    )
    p.add_argument(
        "--data-root",
        type=Path,
        default=d.data_root,
        help="the Training tab only offers and reads dataset folders under this folder (default %(default)s)",
    )
    p.add_argument(
        "--device", default=d.device, help="auto (CUDA when available), cpu, cuda or cuda:N (default %(default)s)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="torch CPU threads for inference (default %(default)s: this machine's cores); a training run started from the app uses half of them at lower priority",
    )
    p.add_argument(
        "--share",
        action="store_true",
        help="also create a temporary public gradio.live link (anyone with it can use the app)",
    )
    p.add_argument(
        "--no-training", action="store_true", help="hide the Training tab (recommended when others can reach the app)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, build the app and serve it until interrupted; returns the exit code."""
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests, one line each
    if a.checkpoint is not None and not a.checkpoint.is_file():
        parser.error(f"--checkpoint {a.checkpoint} does not exist")
    if a.face_model is not None and not a.face_model.is_file():
        parser.error(f"--face-model {a.face_model} does not exist")
    config = AppConfig(
        host=a.host,
        port=a.port,
        data_root=a.data_root,
        device=a.device,
        share=a.share,
        training=not a.no_training,
        face_model=a.face_model,
        threads=a.threads,
    )
    if a.checkpoint is not None:  # otherwise AppConfig's default: $EMOTION_CHECKPOINT or the shipped model
        config.checkpoint = a.checkpoint

    try:
        app = EmotionApp(config)
    except (ValueError, RuntimeError, OSError) as exc:  # e.g. a face model MediaPipe cannot load
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # `kill` (SIGTERM) shuts down like Ctrl-C, so a training run in its own process group is stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app.launch()
    finally:
        app.close()
    return 0


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
