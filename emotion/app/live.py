"""The Live (webcam) tab: its per-frame handler, callable directly, and its layout.

Handlers never raise into Gradio: bad input becomes a message (and a toast for real problems), so
neither a stack trace nor a dead webcam stream ever reaches the user. Errors are logged here.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import gradio as gr
import numpy as np

from ..faces import as_rgb
from ..labels import display
from ..overlay import draw_faces
from ..recognizer import FaceTracker

from .config import IMAGE_HEIGHT, MAX_SIDE, AppConfig
from .inputs import PhotoError, client_image, result_file

if TYPE_CHECKING:
    from .model_panel import ModelManager

log = logging.getLogger(__name__)

STREAM_GAP_S = 2.0  # a longer pause between frames means a new stream: smoothing and FPS start afresh
FACE_HOLD_FRAMES = 5  # the bars stay through this many frames without a face (a blink of the detector), then clear


@dataclass
class LiveSession:
    """One browser session's Live-tab state: its face tracker (EMA smoothing) and frame-rate estimate."""

    tracker: FaceTracker = field(default_factory=FaceTracker)
    last_frame_at: float | None = None  # perf_counter() of the previous frame
    fps: float | None = None  # smoothed frames per second actually analyzed for this session
    misses: int = FACE_HOLD_FRAMES  # consecutive frames without a face (starts "long ago": nothing to hold)

    def tick(self, now: float) -> None:
        """Account for a frame arriving at ``now``."""
        gap = None if self.last_frame_at is None else now - self.last_frame_at
        self.last_frame_at = now
        if gap is None or gap > STREAM_GAP_S:
            self.tracker = FaceTracker()  # faces from an earlier stream must not bias this one
            self.fps = None
            self.misses = FACE_HOLD_FRAMES
        elif gap > 0:
            self.fps = 1.0 / gap if self.fps is None else 0.8 * self.fps + 0.2 / gap


def fit_within(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """``rgb`` downscaled (area interpolation) so its longer side is at most ``max_side``."""
    height, width = rgb.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return rgb
    return cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)


def label_value(face: dict) -> dict[str, float]:
    """A face's probabilities keyed by display name, for gr.Label."""
    return {display(name): p for name, p in face["probabilities"].items()}


def no_model_message(models: ModelManager) -> str:
    return f"No emotion model is loaded ({models.problem}). Pick one in the model panel above, or train one."


def analyze_frame(models: ModelManager, frame: np.ndarray | None, session: LiveSession | None,
                  max_side: int = MAX_SIDE) -> tuple:
    """One webcam frame -> (annotated frame, main face's probabilities, readout, faces JSON, session).

    Empty frames (the camera starting or stopping) leave the outputs as they are. Each session's
    tracker smooths probabilities over frames and keeps the same face's label steady; the bars are
    held through a few frames in which the detector misses the face, instead of flickering.
    """
    session = session or LiveSession()
    if frame is None or np.size(frame) == 0:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), session
    start = time.perf_counter()
    session.tick(start)
    try:
        rgb = fit_within(as_rgb(frame), max_side)
    except ValueError as exc:
        log.warning("unusable webcam frame: %s", exc)
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), session
    recognizer = models.recognizer
    if recognizer is None:
        return rgb, None, no_model_message(models), [], session
    timings: dict[str, float] = {}
    try:
        faces = recognizer.analyze(rgb, tracker=session.tracker, timings=timings)
        annotated = draw_faces(rgb, faces)
    except Exception:  # one bad frame must not end the user's stream
        log.exception("live frame analysis failed")
        return rgb, None, "This frame could not be analyzed (details in the server log).", [], session
    latency_ms = (time.perf_counter() - start) * 1000
    fps = f"{session.fps:.1f}" if session.fps is not None else "–"
    count = f"{len(faces)} face{'s' if len(faces) != 1 else ''}" if faces else "no face in view"
    stages = ", ".join(f"{stage} {ms:.0f}" for stage, ms in timings.items() if stage in ("detect", "forward"))
    readout = f"**{fps} FPS** · {latency_ms:.0f} ms per frame ({stages} ms) · {count}"
    session.misses = 0 if faces else session.misses + 1
    if faces:
        label = label_value(faces[0])
    else:
        label = gr.skip() if session.misses <= FACE_HOLD_FRAMES else None
    return annotated, label, readout, faces, session


def analyze_client_frame(models: ModelManager, payload: object, session: LiveSession | None,
                         max_side: int = MAX_SIDE) -> tuple:
    """The Live tab's event handler: ``analyze_frame`` for a request's unprocessed payload.

    Only a frame the client uploaded or sent inline is decoded (never another file on the server); a bad
    one gets a message instead of an error. The annotated frame goes back in a file of its own.
    """
    try:
        decoded = client_image(payload, max_side)
    except PhotoError as exc:
        return None, None, f"⚠️ {exc}", [], session or LiveSession()
    annotated, *rest = analyze_frame(models, None if decoded is None else decoded[0], session, max_side)
    return (result_file(annotated, "jpeg") if isinstance(annotated, np.ndarray) else annotated), *rest


def build_live_tab(models: ModelManager, config: AppConfig) -> None:
    """The Live tab: webcam in, annotated frames, the main face's probabilities and an FPS readout."""
    with gr.Tab("Live", id="live"):
        session = gr.State(None)
        with gr.Row():
            camera = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam", elem_id="live-camera",
                              height=IMAGE_HEIGHT, scale=3,
                              webcam_options=gr.WebcamOptions(constraints={"video": {"width": 640, "height": 480}}))
            annotated = gr.Image(label="Emotions", format="jpeg", interactive=False, height=IMAGE_HEIGHT, scale=3,
                                 elem_id="live-annotated")
            with gr.Column(scale=2):
                readout = gr.Markdown("Start the webcam (**Record**) to see emotions live.", elem_id="live-readout")
                probs = gr.Label(num_top_classes=7, label="Main face", elem_id="live-label")
        with gr.Accordion("Faces as JSON", open=False):
            faces_json = gr.JSON(label="Faces", elem_id="live-json")

        def on_frame(frame, state):
            return analyze_client_frame(models, frame, state, config.max_side)

        outputs = [annotated, probs, readout, faces_json, session]
        camera.stream(on_frame, inputs=[camera, session], outputs=outputs, stream_every=config.stream_every,
                      time_limit=config.stream_time_limit, concurrency_limit=config.max_live_streams,
                      show_progress="hidden", api_visibility="undocumented", preprocess=False)
        # gradio_client cannot call streaming events, so the same per-frame function also has a plain endpoint.
        frame_api = gr.Button(visible=False)
        frame_api.click(on_frame, inputs=[camera, session], outputs=outputs, api_name="analyze_frame", preprocess=False)


