"""The Live (webcam) tab: its per-frame handler, callable directly, and its layout.

Handlers never raise into Gradio: bad input becomes a message (and a toast for real problems), so
neither a stack trace nor a dead webcam stream ever reaches the user. Errors are logged here.
"""

from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import gradio as gr
import numpy as np

from ..data.labels import CLASS_NAMES, display
from ..inference.faces import as_rgb
from ..inference.overlay import CLASS_COLOURS, draw_faces
from ..inference.recognizer import FaceTracker
from .config import IMAGE_HEIGHT, MAX_SIDE, AppConfig
from .inputs import PhotoError, client_image, result_file
from .timeline import SIZE as TIMELINE_SIZE
from .timeline import Timeline

if TYPE_CHECKING:
    from .model_panel import ModelManager

log = logging.getLogger(__name__)

STREAM_GAP_S = 2.0  # a longer pause between frames means a new stream: smoothing and FPS start afresh
FACE_HOLD_FRAMES = 5  # the bars stay through this many frames without a face (a blink of the detector), then clear
MAX_FACE_PANELS = 4  # with 2 to this many faces each gets a compact panel; more faces: the largest this many
PANEL_TOP = 3  # probabilities listed per face panel
# The readout and the faces JSON are text read a few times per second at most: sending them with every frame
# would only make the browser re-render them at camera speed, time the stream's frames need.
TEXT_EVERY_S = 0.25


def live_tracker() -> FaceTracker:
    """A live stream's tracker: smoothing, one network a frame, and the detector's corner tiles in turn."""
    return FaceTracker(scan_tiles=True)


@dataclass
class LiveSession:
    """One browser session's Live-tab state: face tracker (EMA smoothing), frame rate, timeline, panels shown."""

    tracker: FaceTracker = field(default_factory=live_tracker)
    last_frame_at: float | None = None  # perf_counter() of the previous frame
    fps: float | None = None  # smoothed frames per second actually analyzed for this session
    misses: int = FACE_HOLD_FRAMES  # consecutive frames without a face (starts "long ago": nothing to hold)
    timeline: Timeline = field(default_factory=Timeline)  # the main face's smoothed probabilities, last 30 s
    panels: str = ""  # the face panels' HTML last sent, so an unchanged one is not sent again
    last_input: np.ndarray | None = None  # the previous webcam frame as received, to spot the same frame sent twice
    text_at: float | None = None  # perf_counter() when the readout and faces JSON were last sent

    def tick(self, now: float) -> None:
        """Account for a frame arriving at ``now``."""
        gap = None if self.last_frame_at is None else now - self.last_frame_at
        self.last_frame_at = now
        if gap is None or gap > STREAM_GAP_S:
            self.tracker = live_tracker()  # an earlier stream's faces must not bias this one
            self.fps = None
            self.misses = FACE_HOLD_FRAMES
            self.timeline.reset()
            self.text_at = None
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


def _hex(name: str) -> str:
    r, g, b = CLASS_COLOURS.get(name, (128, 128, 128))
    return f"#{r:02x}{g:02x}{b:02x}"


def _panel(number: int, face: dict) -> str:
    """One face's compact panel: its label and score, then its top probabilities as small bars."""
    top = sorted(face["probabilities"].items(), key=lambda item: item[1], reverse=True)[:PANEL_TOP]
    rows = "".join(
        '<div style="display:flex;gap:6px;align-items:center;font-size:0.85em">'
        f'<span style="flex:0 0 6.5em">{html.escape(display(name))}</span>'
        '<span style="flex:1;height:8px;background:#eee;border-radius:4px">'
        f'<span style="display:block;height:8px;border-radius:4px;width:{p * 100:.0f}%;background:{_hex(name)}"></span>'
        f'</span><span style="flex:0 0 2.8em;text-align:right">{p:.0%}</span></div>'
        for name, p in top
    )
    return (
        f'<div class="face-panel" style="flex:1 1 180px;max-width:260px;padding:6px 8px;border-radius:8px;'
        f'border:2px solid {_hex(face["label"])}"><div><b>Face {number}</b> · '
        f"{html.escape(display(face['label']))} {face['score']:.0%}</div>{rows}</div>"
    )


def face_panels(faces: list[dict]) -> str:
    """HTML with one compact panel per face (label, top probabilities) when 2 or more faces are in view, else ''.

    Panels run left to right as the faces appear in the annotated frame; with more than ``MAX_FACE_PANELS``
    faces the largest ones get panels and a note counts the rest.
    """
    if len(faces) < 2:
        return ""
    shown = sorted(faces[:MAX_FACE_PANELS], key=lambda face: face["box"][0])
    more = len(faces) - len(shown)
    note = f'<div style="align-self:center">+{more} more (see JSON)</div>' if more > 0 else ""
    cards = "".join(_panel(i, face) for i, face in enumerate(shown, 1))
    return f'<div class="face-panels" style="display:flex;flex-wrap:wrap;gap:8px">{cards}{note}</div>'


def no_model_message(models: ModelManager) -> str:
    return f"No emotion model is loaded ({models.problem}). Pick one in the model panel above, or train one."


def analyze_frame(
    models: ModelManager, frame: np.ndarray | None, session: LiveSession | None, max_side: int = MAX_SIDE
) -> tuple:
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


def analyze_client_frame(
    models: ModelManager, payload: object, session: LiveSession | None, max_side: int = MAX_SIDE
) -> tuple:
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


def stream_frame(
    models: ModelManager,
    frame: np.ndarray | None,
    session: LiveSession | None,
    max_side: int = MAX_SIDE,
    show_timeline: bool = True,
) -> tuple:
    """``analyze_frame`` plus the stream's extras: (annotated, probabilities, readout, faces JSON, face panels,
    timeline chart, session).

    Each extra is sent only when it changed (panels) or is due (the chart, readout and JSON: a few times
    per second), so the stream keeps its frame rate with them on. The browser may capture the same camera
    frame twice (it asks faster than a camera makes frames); a repeat is not analyzed again.
    """
    if (
        session is not None
        and frame is not None
        and session.last_input is not None
        and np.array_equal(frame, session.last_input)
    ):
        return (*[gr.skip()] * 6, session)
    annotated, label, readout, faces, session = analyze_frame(models, frame, session, max_side)
    session.last_input = frame
    if not isinstance(faces, list):  # an empty frame: nothing changes
        return annotated, label, readout, faces, gr.skip(), gr.skip(), session
    now = time.perf_counter()
    if faces:
        session.timeline.add(now, np.array([faces[0]["probabilities"][name] for name in CLASS_NAMES]))
    chart = session.timeline.render(now) if show_timeline and session.timeline.due(now) else gr.skip()
    panels = face_panels(faces)
    if panels == session.panels:
        panels = gr.skip()
    else:
        session.panels = panels
    if session.text_at is not None and now - session.text_at < TEXT_EVERY_S:
        readout, faces = gr.skip(), gr.skip()
    else:
        session.text_at = now
    return annotated, label, readout, faces, panels, chart, session


def stream_client_frame(
    models: ModelManager,
    payload: object,
    session: LiveSession | None,
    max_side: int = MAX_SIDE,
    show_timeline: bool = True,
) -> tuple:
    """The Live stream's event handler: ``stream_frame`` for a request's unprocessed payload, checked and
    decoded like ``analyze_client_frame``, with the annotated frame in a file of its own."""
    try:
        decoded = client_image(payload, max_side)
    except PhotoError as exc:
        return None, None, f"⚠️ {exc}", [], gr.skip(), gr.skip(), session or LiveSession()
    annotated, label, readout, faces, panels, chart, session = stream_frame(
        models, None if decoded is None else decoded[0], session, max_side, show_timeline
    )
    return result_file(annotated, "jpeg"), label, readout, faces, panels, result_file(chart, "png"), session


def build_live_tab(models: ModelManager, config: AppConfig) -> None:
    """The Live tab: webcam in, annotated frames, the main face's probabilities, an FPS readout, a panel per face
    when there are several, and the timeline of the main face's emotions."""
    with gr.Tab("Live", id="live"):
        session = gr.State(None)
        with gr.Row():
            camera = gr.Image(
                sources=["webcam"],
                streaming=True,
                type="numpy",
                label="Webcam",
                elem_id="live-camera",
                height=IMAGE_HEIGHT,
                scale=3,
                webcam_options=gr.WebcamOptions(constraints={"video": {"width": 640, "height": 480}}),
            )
            annotated = gr.Image(
                label="Emotions",
                format="jpeg",
                interactive=False,
                height=IMAGE_HEIGHT,
                scale=3,
                elem_id="live-annotated",
            )
            with gr.Column(scale=2):
                readout = gr.Markdown("Start the webcam (**Record**) to see emotions live.", elem_id="live-readout")
                probs = gr.Label(num_top_classes=7, label="Main face", elem_id="live-label")
        panels = gr.HTML("", elem_id="live-faces")
        show_timeline = gr.Checkbox(
            True, label="Timeline: the main face's emotions over the last 30 s", elem_id="live-timeline-on"
        )
        # A fixed height: a new chart then replaces the old one without a relayout of the page.
        timeline = gr.Image(
            label="Timeline",
            format="png",
            interactive=False,
            show_label=False,
            elem_id="live-timeline",
            buttons=[],
            height=TIMELINE_SIZE[1],
            container=False,
        )
        with gr.Accordion("Faces as JSON", open=False):
            faces_json = gr.JSON(label="Faces", elem_id="live-json")

        def on_stream(frame, state, with_timeline):
            return stream_client_frame(models, frame, state, config.max_side, with_timeline)

        # Frames are dropped, never queued: the browser sends the next frame only once the previous result is back.
        camera.stream(
            on_stream,
            inputs=[camera, session, show_timeline],
            outputs=[annotated, probs, readout, faces_json, panels, timeline, session],
            stream_every=config.stream_every,
            time_limit=config.stream_time_limit,
            concurrency_limit=config.max_live_streams,
            show_progress="hidden",
            api_visibility="undocumented",
            preprocess=False,
        )
        show_timeline.change(
            lambda on: gr.Image(visible=on), inputs=show_timeline, outputs=timeline, api_visibility="undocumented"
        )

        def on_frame(frame, state):
            return analyze_client_frame(models, frame, state, config.max_side)

        # gradio_client cannot call streaming events, so the same per-frame function also has a plain endpoint.
        frame_api = gr.Button(visible=False)
        frame_api.click(
            on_frame,
            inputs=[camera, session],
            outputs=[annotated, probs, readout, faces_json, session],
            api_name="analyze_frame",
            preprocess=False,
        )
