"""The app's live model: one recognizer shared by every session, swappable while sessions use it."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..inference.classifier import EmotionClassifier
from ..inference.faces import FaceDetector
from ..inference.recognizer import Recognizer
from ..models.checkpoint import CheckpointError

log = logging.getLogger(__name__)


class ModelManager:
    """Holds the face detector and the current emotion model, and switches models safely.

    Handlers read ``recognizer`` once per call and use that object to the end, so a switch never
    changes the model under a frame that is being analyzed; the lock only keeps two switches from
    interleaving. The detector is loaded once and kept across switches.
    """

    def __init__(
        self,
        checkpoint: Path,
        face_model: Path | None,
        device: str,
        assets_dir: Path,
        runs_dir: Path,
        repo_root: Path,
        fallback: Path | None = None,
    ):
        self.device = device
        self.assets_dir = Path(assets_dir)
        self.runs_dir = Path(runs_dir)
        self.repo_root = Path(repo_root)
        self.detector = FaceDetector(str(face_model) if face_model else None)
        self._lock = threading.Lock()
        self.startup_path = Path(
            checkpoint
        ).resolve()  # stays on offer after switching away (e.g. --checkpoint elsewhere)
        self.recognizer: Recognizer | None = None
        self.active_path: Path | None = None
        self.problem: str | None = None  # why no model is loaded, shown in the UI instead of results
        self.notice: str | None = None  # why the app runs another model than it was given, shown in the panel
        try:
            self._load(Path(checkpoint))
        except CheckpointError as exc:
            # The app still starts: on ``fallback`` (the shipped model) when it loads, saying why; otherwise
            # without a model, which can then be trained in the Training tab or picked in the model panel.
            self.problem = str(exc)
            log.error("cannot load the emotion model %s: %s", checkpoint, exc)
            if fallback is not None and Path(fallback).resolve() != Path(checkpoint).resolve():
                self._load_fallback(Path(fallback), str(exc))

    def _load_fallback(self, fallback: Path, reason: str) -> None:
        try:
            name = self._load(fallback)
        except CheckpointError as exc:
            log.error("the fallback model %s does not load either: %s", fallback, exc)
            return
        self.notice = f"The requested checkpoint could not be loaded, so the shipped model runs instead: {reason}"
        log.warning("using %s instead", name)

    def _load(self, path: Path) -> str:
        classifier = EmotionClassifier.from_checkpoint(path, device=self.device)
        self.recognizer = Recognizer(classifier, self.detector)
        self.active_path = path.resolve()
        self.problem = None
        self.notice = None
        return classifier.name

    def checkpoints(self) -> list[Path]:
        """Checkpoints the UI offers: ``assets/*.pt``, ``runs/*/best.pt`` newest first, and the one the app started with."""
        found = sorted(self.assets_dir.glob("*.pt"))
        found += sorted(self.runs_dir.glob("*/best.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        resolved = [p.resolve() for p in found]
        for extra in (self.startup_path, self.active_path):
            if extra is not None and extra not in resolved and extra.is_file():
                resolved.append(extra)
        return resolved

    def choices(self) -> list[tuple[str, str]]:
        """(label, path) pairs for a dropdown; labels are relative to the repository when possible."""
        out = []
        for path in self.checkpoints():
            label = str(path.relative_to(self.repo_root)) if path.is_relative_to(self.repo_root) else str(path)
            out.append((label, str(path)))
        return out

    def switch(self, path: str | Path) -> str:
        """Make the checkpoint at ``path`` the live model; returns its name.

        Only checkpoints the UI offers can be loaded, so a request cannot make the server read other files.
        Raises CheckpointError (missing, unreadable or not a checkpoint); the current model then stays.
        """
        path = Path(path).resolve()
        if path not in self.checkpoints():
            raise CheckpointError(f"{path.name} is not one of the offered checkpoints (assets/*.pt, runs/*/best.pt)")
        with self._lock:
            name = self._load(path)
        log.info("live model switched to %s", name)
        return name

    def describe(self) -> str:
        """Markdown summary of what is running: model, device, whether its probabilities are calibrated, and the
        face detector (flagging the Haar fallback)."""
        rec = self.recognizer
        model = f"`{rec.classifier.name}`" if rec is not None else f"**none**: {self.problem}"
        device = str(rec.classifier.device) if rec is not None else self.device
        faces = self.detector.source
        if self.detector.backend == "haar":
            faces = f"⚠️ {faces}"
        text = f"**Model:** {model} &nbsp;·&nbsp; **Device:** `{device}`"
        if rec is not None:  # the bars are probabilities: say whether they were calibrated (`train_cli.py calibrate`)
            t = rec.classifier.temperature
            text += " &nbsp;·&nbsp; **Probabilities:** " + (
                f"calibrated (T = {t:.2f})" if t != 1.0 else "not calibrated"
            )
        text += f"  \n**Face detector:** {faces}"
        return f"{text}  \n⚠️ {self.notice}" if self.notice else text


@dataclass
class ModelPanel:
    """The model panel's components, for events elsewhere that change the live model."""

    info: gr.Markdown
    choice: gr.Dropdown


def switch_model(models: ModelManager, path: str | None) -> tuple[str, gr.Dropdown]:
    """Dropdown handler: switch to ``path``; a failure is shown as a warning and the old model stays."""
    if path:
        try:
            name = models.switch(path)
            gr.Info(f"Now using {name}")
        except CheckpointError as exc:
            log.warning("model switch refused: %s", exc)
            gr.Warning(str(exc))
    return models.describe(), refresh_choices(models)


def refresh_choices(models: ModelManager) -> gr.Dropdown:
    """A dropdown update listing the current checkpoints, with the active one selected."""
    active = str(models.active_path) if models.active_path else None
    return gr.Dropdown(choices=models.choices(), value=active)


def build_model_panel(models: ModelManager) -> ModelPanel:
    """The model panel: what runs (model, device, face detector) and a checkpoint switcher."""
    with gr.Row():
        info = gr.Markdown(models.describe(), elem_id="model-info")
        with gr.Column(scale=0, min_width=360):
            choice = gr.Dropdown(
                choices=models.choices(),
                value=str(models.active_path) if models.active_path else None,
                label="Emotion model",
                info="checkpoints in assets/ and runs/",
                elem_id="model-choice",
            )
            refresh = gr.Button("↻ Refresh list", size="sm")
    choice.input(
        lambda path: switch_model(models, path), inputs=choice, outputs=[info, choice], api_name="switch_model"
    )
    refresh.click(
        lambda: (models.describe(), refresh_choices(models)), outputs=[info, choice], api_visibility="private"
    )
    return ModelPanel(info, choice)
