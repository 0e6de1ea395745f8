"""The Live (webcam) and Upload (photo) tabs: their handlers, callable directly, and their layout.

Handlers never raise into Gradio: bad input becomes a message (and a toast for real problems), so
neither a stack trace nor a dead webcam stream ever reaches the user. Errors are logged here.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import gradio as gr
import numpy as np
from PIL import Image

from .faces import as_rgb
from .labels import display
from .overlay import draw_faces
from .recognizer import FaceTracker, read_rgb

if TYPE_CHECKING:
    from .ui import AppConfig
    from .ui_models import ModelManager

log = logging.getLogger(__name__)

MAX_FACE_LABELS = 6  # probability panels shown for a photo; the JSON always has every face
SMALL_FACE_PX = 48  # faces smaller than a FER2013 crop are upscaled for the model and less reliable
IMAGE_HEIGHT = 380  # px; webcam and result side by side with the bars still fit a laptop screen
STREAM_GAP_S = 2.0  # a longer pause between frames means a new stream: smoothing and FPS start afresh
FACE_HOLD_FRAMES = 5  # the bars stay through this many frames without a face (a blink of the detector), then clear
MAX_SIDE = 1920  # photos and frames are downscaled to this longer side before analysis


class PhotoError(ValueError):
    """An upload that cannot be analyzed; the message is written for the user."""


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


def load_photo(value: Any, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """An uploaded photo as HxWx3 uint8 RGB no larger than ``max_side``, and its original (width, height).

    ``value`` is a file path, Gradio's file payload (a dict with ``path``) or an image array. Any mode
    works (grayscale, RGBA composited on white, palette); raises PhotoError for anything unreadable.
    """
    if isinstance(value, dict):
        value = value.get("path")
    if isinstance(value, np.ndarray):
        try:
            rgb = as_rgb(value)
        except ValueError as exc:
            raise PhotoError(f"This image could not be used: {exc}") from exc
        return fit_within(rgb, max_side), (rgb.shape[1], rgb.shape[0])
    if not isinstance(value, (str, os.PathLike)):
        raise PhotoError("No photo was received; please upload a JPEG, PNG or WebP image.")
    path = Path(value)
    try:
        with Image.open(path) as im:
            size = im.size
        return read_rgb(path, max_side), size
    except Image.DecompressionBombError as exc:
        raise PhotoError("This image has too many pixels to analyze safely; please upload a smaller version.") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for unknown formats and truncated or corrupt files
        log.info("unreadable upload %s: %s", path.name, exc)
        raise PhotoError(f"“{path.name}” could not be read as an image; please upload a JPEG, PNG or WebP photo.") from exc


def label_value(face: dict) -> dict[str, float]:
    """A face's probabilities keyed by display name, for gr.Label."""
    return {display(name): p for name, p in face["probabilities"].items()}


def _no_model_message(models: ModelManager) -> str:
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
        return rgb, None, _no_model_message(models), [], session
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


def _hidden_labels(count: int = MAX_FACE_LABELS) -> list:
    return [gr.Label(value=None, visible=False) for _ in range(count)]


def analyze_photo(models: ModelManager, photo: Any, whole_image: bool = False, max_side: int = MAX_SIDE) -> tuple:
    """A photo -> (annotated image, message, faces JSON, one gr.Label update per face panel).

    Faces are largest first; ``whole_image`` classifies the whole picture as one face (for face crops).
    """
    if photo is None:
        return None, "Upload a photo (JPEG, PNG or WebP) to see the emotion of each face.", [], *_hidden_labels()
    try:
        rgb, (width, height) = load_photo(photo, max_side)
    except PhotoError as exc:
        gr.Warning(str(exc))
        return None, f"⚠️ {exc}", [], *_hidden_labels()
    recognizer = models.recognizer
    if recognizer is None:
        return rgb, _no_model_message(models), [], *_hidden_labels()
    try:
        faces = recognizer.analyze(rgb, whole_image=whole_image)
        annotated = draw_faces(rgb, faces)
    except Exception:
        log.exception("photo analysis failed")
        gr.Warning("Something went wrong analyzing this photo; the details are in the server log.")
        return rgb, "⚠️ This photo could not be analyzed.", [], *_hidden_labels()
    notes = []
    if max(width, height) > max(rgb.shape[:2]):
        notes.append(f"Analyzed at {rgb.shape[1]}×{rgb.shape[0]} (downscaled from {width}×{height}).")
    if not faces:
        message = ("No face found in this photo. Faces that are small, turned away or partly covered are hard to "
                   "detect: try a closer, well-lit photo, or tick **Classify the whole image** if it already is a face crop.")
        gr.Info("No face found in this photo.")
        return annotated, " ".join([message, *notes]), [], *_hidden_labels()
    summary = ", ".join(f"{display(f['label'])} ({f['score']:.0%})" for f in faces[:MAX_FACE_LABELS])
    message = f"Found {len(faces)} face{'s' if len(faces) != 1 else ''}, largest first: {summary}."
    if len(faces) > MAX_FACE_LABELS:
        notes.append(f"Bars are shown for the {MAX_FACE_LABELS} largest faces; the JSON below lists all {len(faces)}.")
    if len(faces) >= models.detector.max_faces and not whole_image:
        notes.append(f"At most {models.detector.max_faces} faces are analyzed per photo (the largest ones).")
    small = [str(i + 1) for i, f in enumerate(faces) if not whole_image and min(f["box"][2:]) < SMALL_FACE_PX]
    if small:
        notes.append(f"Face {', '.join(small)} {'is' if len(small) == 1 else 'are'} smaller than {SMALL_FACE_PX} px, "
                     "so less reliable.")
    labels = [gr.Label(value=label_value(f), label=f"Face {i + 1}: {display(f['label'])}", visible=True)
              for i, f in enumerate(faces[:MAX_FACE_LABELS])]
    labels += _hidden_labels(MAX_FACE_LABELS - len(labels))
    return annotated, " ".join([message, *notes]), faces, *labels


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
            return analyze_frame(models, frame, state, config.max_side)

        outputs = [annotated, probs, readout, faces_json, session]
        camera.stream(on_frame, inputs=[camera, session], outputs=outputs, stream_every=config.stream_every,
                      time_limit=config.stream_time_limit, concurrency_limit=config.max_live_streams,
                      show_progress="hidden", api_visibility="undocumented")
        # gradio_client cannot call streaming events, so the same per-frame function also has a plain endpoint.
        frame_api = gr.Button(visible=False)
        frame_api.click(on_frame, inputs=[camera, session], outputs=outputs, api_name="analyze_frame")


def build_upload_tab(models: ModelManager, config: AppConfig) -> None:
    """The Upload tab: a photo of any size and mode in, annotated image, one probability panel per face and JSON."""
    with gr.Tab("Upload a photo", id="upload"):
        with gr.Row():
            with gr.Column():
                # type="filepath" and preprocess=False below: the handler decodes the file itself, so a corrupt
                # upload gets a friendly message instead of failing inside Gradio's image preprocessing.
                photo = gr.Image(sources=["upload", "clipboard"], type="filepath", label="Photo", height=IMAGE_HEIGHT,
                             elem_id="upload-photo")
                whole = gr.Checkbox(False, label="Classify the whole image", info="skip face detection (for photos that are one face crop)")
                run = gr.Button("Analyze", variant="primary")
            with gr.Column():
                annotated = gr.Image(label="Result", interactive=False, height=IMAGE_HEIGHT, elem_id="upload-annotated")
                message = gr.Markdown(elem_id="upload-message")
        with gr.Row():
            labels = [gr.Label(num_top_classes=7, visible=False, elem_classes="face-label") for _ in range(MAX_FACE_LABELS)]
        with gr.Accordion("Faces as JSON", open=False):
            faces_json = gr.JSON(label="Faces", elem_id="upload-json")

        gr.on([photo.upload, run.click], lambda p, w: analyze_photo(models, p, w, config.max_side),
              inputs=[photo, whole], outputs=[annotated, message, faces_json, *labels], preprocess=False,
              api_name="analyze_photo", concurrency_limit=2)
