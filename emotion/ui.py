"""The Gradio 6 app: Live (webcam), Upload (photo) and Training tabs under a model panel.

``build_demo(AppConfig(...))`` returns the Blocks; ``EmotionApp`` also owns the shared model and
the training runner, launches with safe defaults and cleans up. Importing this module loads no
model and starts nothing.
"""
from __future__ import annotations

import atexit
import logging
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import torch

from .predict import default_checkpoint
from .training_runner import TrainingRunner
from .ui_live import MAX_SIDE, build_live_tab, build_upload_tab
from .ui_models import ModelManager, build_model_panel
from .ui_training import build_training_tab

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent

# System fonts: the default theme fetches Google Fonts, a request to a third party (and a stall when offline).
THEME = gr.themes.Soft(font=("ui-sans-serif", "system-ui", "sans-serif"), font_mono=("ui-monospace", "monospace"))
CSS = """
#live-readout { font-size: 1.1rem; }
.face-label { min-width: 220px; }
"""


@dataclass
class AppConfig:
    """How the app runs; ``app.py`` fills it from the command line."""

    checkpoint: Path = field(default_factory=default_checkpoint)  # $EMOTION_CHECKPOINT or the shipped assets/emotion_cnn.pt
    face_model: Path | None = None  # None: $EMOTION_FACE_MODEL, the cache, a download, else the Haar fallback
    device: str = "auto"  # CUDA when available, else the CPU
    data_root: Path = REPO.parent / "shared"  # the Training tab only reads datasets (and CLIP weights) under this folder
    runs_dir: Path = REPO / "runs"  # training runs started from the UI go to runs/ui-<time>/
    assets_dir: Path = REPO / "assets"  # shipped checkpoints offered in the model panel
    training: bool = True  # show the Training tab (--no-training hides it, e.g. on a shared server)
    host: str = "127.0.0.1"  # localhost only: nothing else on the network can reach the app unless asked
    port: int = 7860  # Gradio's usual port
    share: bool = False  # no public gradio.live link unless asked
    max_file_size: str = "20mb"  # upload limit, checked by Gradio before a file reaches a handler
    max_side: int = MAX_SIDE  # photos and frames are downscaled to this longer side before analysis
    stream_every: float = 0.1  # seconds between webcam frames sent to the server (up to 10 FPS)
    stream_time_limit: int = 600  # a webcam stream stops after 10 minutes so one tab cannot hold a slot forever
    max_live_streams: int = 4  # webcam streams analyzed at once; more sessions wait for a free slot
    training_nice: int = 10  # the trainer runs at lower CPU priority so live inference stays responsive
    threads: int = 1  # torch CPU threads for inference: one thread keeps a frame at a few ms even while training or other streams share the cores; 0 = one per core


class EmotionApp:
    """The app's shared state (live model, training runner) and its Blocks."""

    def __init__(self, config: AppConfig):
        self.config = config
        if config.threads > 0:
            # Two threads on a busy 2-core machine wait on each other: measured 191 ms vs 4 ms per CNN forward.
            torch.set_num_threads(config.threads)
        self.models = ModelManager(config.checkpoint, config.face_model, config.device, config.assets_dir,
                                   config.runs_dir, REPO)
        self.runner = TrainingRunner(config.runs_dir, nice=config.training_nice) if config.training else None
        if self.runner is not None:
            # The trainer lives in its own process group, so it would outlive the app without this.
            atexit.register(self.runner.stop)
        self.demo = self._build()

    def _build(self) -> gr.Blocks:
        with gr.Blocks(title="Emotion recognition") as demo:
            gr.Markdown("# Facial emotion recognition\nSeven emotions (FER2013 classes), live from your webcam or from a photo. "
                        "Frames and photos are analyzed on this server and not stored.")
            panel = build_model_panel(self.models)
            with gr.Tabs():
                build_live_tab(self.models, self.config)
                build_upload_tab(self.models, self.config)
                if self.runner is not None:
                    build_training_tab(self.runner, self.models, panel, self.config)
        return demo

    def launch(self, **overrides) -> tuple:
        """Launch with the config's safe defaults (localhost, no share link, upload size limit); kwargs override."""
        kwargs = dict(server_name=self.config.host, server_port=self.config.port, share=self.config.share,
                      max_file_size=self.config.max_file_size, theme=THEME, css=CSS, footer_links=["api"])
        kwargs.update(overrides)
        log.info("starting the app on http://%s:%s", kwargs["server_name"], kwargs["server_port"])
        return self.demo.launch(**kwargs)

    def close(self) -> None:
        """Stop any training run and shut the server down."""
        if self.runner is not None:
            self.runner.stop()
        self.demo.close()


def build_demo(config: AppConfig) -> gr.Blocks:
    """The app's Blocks for ``config`` (loads the model and the face detector)."""
    return EmotionApp(config).demo
