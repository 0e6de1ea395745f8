"""How the app runs (``AppConfig``) and the layout constants its tabs share; imports nothing of Gradio."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..inference.classifier import default_checkpoint
from ..utils.runtime import cpu_cores

REPO = Path(__file__).resolve().parent.parent.parent  # the project root: assets/, runs/ and ../shared sit around it
MAX_SIDE = 1920  # photos and frames are downscaled to this longer side before analysis
IMAGE_HEIGHT = 380  # px; webcam and result side by side with the bars still fit a laptop screen


@dataclass
class AppConfig:
    """How the app runs; ``app.py`` fills it from the command line."""

    checkpoint: Path = field(
        default_factory=default_checkpoint
    )  # $EMOTION_CHECKPOINT or the shipped assets/emotion_cnn.pt
    face_model: Path | None = None  # None: $EMOTION_FACE_MODEL, the cache, a download, else the Haar fallback
    device: str = "auto"  # CUDA when available, else the CPU
    data_root: Path = (
        REPO.parent / "shared"
    )  # the Training tab only reads datasets (and CLIP weights) under this folder
    runs_dir: Path = REPO / "runs"  # training runs started from the UI go to runs/ui-<time>/
    assets_dir: Path = REPO / "assets"  # shipped checkpoints offered in the model panel
    training: bool = True  # show the Training tab (--no-training hides it, e.g. on a shared server)
    host: str = "127.0.0.1"  # localhost only: nothing else on the network can reach the app unless asked
    port: int = 7860  # Gradio's usual port
    share: bool = False  # no public gradio.live link unless asked
    max_file_size: str = "20mb"  # upload limit, checked by Gradio before a file reaches a handler
    max_side: int = MAX_SIDE  # photos and frames are downscaled to this longer side before analysis
    cache_sweep_s: int = 10  # how often Gradio's temp folder is swept of this app's uploads and results
    cache_max_age_s: int = (
        30  # uploads and results older than this are deleted, so none outlives 40 s after its response
    )
    # Seconds between the browser's attempts to send a webcam frame. The browser sends a frame only when the
    # previous result is back (frames are dropped, never queued), so this caps the rate and sets how soon a
    # frame goes out once the server is free: 20 ms caps at 50/s, above a webcam's 30.
    stream_every: float = 0.02
    stream_time_limit: int = 600  # a webcam stream stops after 10 minutes so one tab cannot hold a slot forever
    max_live_streams: int = 4  # webcam streams analyzed at once; more sessions wait for a free slot
    training_nice: int = 10  # the trainer runs at lower CPU priority so live inference stays responsive
    training_threads: int = 0  # torch threads of a training run started from the UI; 0 = half the cores (at least 1), the rest stay free for live inference
    threads: int = field(
        default_factory=cpu_cores
    )  # torch CPU threads for inference: every core this process may use; 0 = the same
