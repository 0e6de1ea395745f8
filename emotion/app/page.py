"""The app's page: Live (webcam), Upload (photo) and Training tabs under a model panel.

``build_demo(AppConfig(...))`` returns the Blocks; ``EmotionApp`` also owns the shared model and
the training runner, launches with safe defaults and cleans up. Importing this module loads no
model and starts nothing.
"""

from __future__ import annotations

import atexit
import logging

import gradio as gr
import torch

from ..inference.classifier import DEFAULT_CHECKPOINT
from ..utils.runtime import cpu_cores
from .cache_sweep import CacheSweeper
from .config import REPO, AppConfig
from .live import build_live_tab
from .model_panel import ModelManager, build_model_panel
from .training_runner import TrainingRunner
from .training_tab import build_training_tab
from .upload import build_upload_tab
from .video_tab import build_video_tab

log = logging.getLogger(__name__)

# System fonts: the default theme fetches Google Fonts, a request to a third party (and a stall when offline).
THEME = gr.themes.Soft(font=("ui-sans-serif", "system-ui", "sans-serif"), font_mono=("ui-monospace", "monospace"))
CSS = """
#live-readout { font-size: 1.1rem; }
.face-label { min-width: 220px; }
"""


class EmotionApp:
    """The app's shared state (live model, training runner) and its Blocks."""

    def __init__(self, config: AppConfig):
        self.config = config
        # Every core by default; a UI training run yields instead (lower priority, fewer threads: TrainingRunner).
        torch.set_num_threads(config.threads or cpu_cores())
        self.models = ModelManager(
            config.checkpoint,
            config.face_model,
            config.device,
            config.assets_dir,
            config.runs_dir,
            REPO,
            fallback=DEFAULT_CHECKPOINT,
        )
        self.runner = (
            TrainingRunner(config.runs_dir, nice=config.training_nice, threads=config.training_threads)
            if config.training
            else None
        )
        if self.runner is not None:
            # The trainer lives in its own process group, so it would outlive the app without this.
            atexit.register(self.runner.stop)
        self.demo = self._build()
        # Uploads, webcam frames and results older than cache_max_age_s are deleted every cache_sweep_s, so
        # "not stored" holds; whatever is left goes when the app closes or the process exits.
        self.sweeper = CacheSweeper(self.demo, config.cache_sweep_s, config.cache_max_age_s)

    def _build(self) -> gr.Blocks:
        # No delete_cache here: CacheSweeper deletes uploads, webcam frames and result images instead (Gradio's
        # own sweep dies under a webcam's traffic; see cache_sweep.py).
        with gr.Blocks(title="Emotion recognition") as demo:
            gr.Markdown(
                "# Facial emotion recognition\nSeven emotions (FER2013 classes), live from your webcam or from a photo. "
                "Frames and photos are analyzed on this server and not stored: they and the results are deleted within a minute."
            )
            panel = build_model_panel(self.models)
            with gr.Tabs():
                build_live_tab(self.models, self.config)
                build_upload_tab(self.models, self.config)
                build_video_tab(self.models, self.config)
                if self.runner is not None:
                    build_training_tab(self.runner, self.models, panel, self.config)
        return demo

    def launch(self, **overrides) -> tuple:
        """Launch with the config's safe defaults (localhost, no share link, upload size limit); kwargs override."""
        kwargs = dict(
            server_name=self.config.host,
            server_port=self.config.port,
            share=self.config.share,
            max_file_size=self.config.max_file_size,
            theme=THEME,
            css=CSS,
            footer_links=["api"],
        )
        kwargs.update(overrides)
        log.info("starting the app on http://%s:%s", kwargs["server_name"], kwargs["server_port"])
        self.sweeper.start()
        atexit.register(self.sweeper.stop)  # a served app leaves nothing behind, even when it is never closed
        return self.demo.launch(**kwargs)

    def close(self) -> None:
        """Stop any training run, shut the server down and delete the uploads and results still on disk."""
        if self.runner is not None:
            self.runner.stop()
        self.demo.close()
        self.sweeper.stop()
        atexit.unregister(self.sweeper.stop)  # done: nothing is left to delete at exit


def build_demo(config: AppConfig) -> gr.Blocks:
    """The app's Blocks for ``config`` (loads the model and the face detector)."""
    return EmotionApp(config).demo
