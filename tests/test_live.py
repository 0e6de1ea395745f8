"""The Live tab's stream extras called directly (face panels, the timeline chart), and the speed settings:
inference threads, the stream cadence, and a UI training run that yields to live inference."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest
from conftest import make_folder_dataset
from make_clip import face_scene
from test_faces import compose

from emotion.app import AppConfig
from emotion.app.live import MAX_FACE_PANELS, PANEL_TOP, TEXT_EVERY_S, LiveSession, face_panels, stream_frame
from emotion.app.model_panel import ModelManager
from emotion.app.timeline import GAP_S, SIZE, Timeline
from emotion.app.training_runner import TrainingRunner, TrainRequest
from emotion.data.labels import CLASS_NAMES, display
from emotion.inference.faces import Box
from emotion.inference.overlay import CLASS_COLOURS
from emotion.utils.runtime import cpu_cores

ROOT = Path(__file__).resolve().parent.parent
SKIP = gr.skip()
_FRAME_NUMBERS = itertools.count(1)


@pytest.fixture(scope="module")
def models(tiny_cnn_checkpoint: Path, face_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelManager:
    base = tmp_path_factory.mktemp("live")
    return ModelManager(tiny_cnn_checkpoint, face_model_path, "cpu", base / "assets", base / "runs", ROOT)


def _fresh(frame: np.ndarray) -> np.ndarray:
    """A copy of ``frame`` one pixel different: the next camera frame (the same frame twice is skipped)."""
    out = frame.copy()
    out[0, 0] = next(_FRAME_NUMBERS) % 256
    return out


def _face(x: int, label: str, score: float = 0.6) -> dict:
    rest = (1.0 - score) / (len(CLASS_NAMES) - 1)
    probs = {name: score if name == label else rest for name in CLASS_NAMES}
    return {"box": [x, 50, 100, 100], "label": label, "score": score, "probabilities": probs}


# --- face panels ------------------------------------------------------------------------------------------


def test_one_face_needs_no_panels() -> None:
    assert face_panels([]) == "" and face_panels([_face(10, "happy")]) == ""


def test_two_to_four_faces_get_a_panel_each_left_to_right() -> None:
    faces = [_face(400, "happy"), _face(20, "sad"), _face(220, "angry")]  # largest first, as the recognizer gives them
    text = face_panels(faces)
    assert text.count('class="face-panel"') == 3
    order = [text.index(display(label)) for label in ("sad", "angry", "happy")]
    assert order == sorted(order), "panels follow the faces from left to right"
    for i in (1, 2, 3):
        assert f"<b>Face {i}</b>" in text
    for label in ("happy", "sad", "angry"):
        assert f"· {display(label)} 60%" in text  # each panel's label and score
    assert text.count(";width:") == 3 * PANEL_TOP  # top probabilities as bars


def test_more_than_four_faces_show_the_largest_and_count_the_rest() -> None:
    faces = [_face(100 * i, name) for i, name in enumerate(CLASS_NAMES[:6])]
    text = face_panels(faces)
    assert text.count('class="face-panel"') == MAX_FACE_PANELS and "+2 more" in text


def test_stream_frame_sends_panels_for_several_faces_only_when_they_change(
    models: ModelManager, real_faces, monkeypatch: pytest.MonkeyPatch
) -> None:
    canvas = np.full((480, 640, 3), 160, np.uint8)
    boxes = []
    for i, name in enumerate(("happy", "sad", "surprise")):
        canvas[140:340, 10 + 210 * i : 210 + 210 * i] = cv2.resize(real_faces[name][0], (200, 200))[:, :, None]
        boxes.append(Box(10 + 210 * i, 140, 200, 200, 0.9))
    monkeypatch.setattr(models.detector, "detect", lambda rgb, **kw: boxes)  # detection is covered in test_faces.py
    annotated, label, readout, faces, panels, chart, session = stream_frame(models, _fresh(canvas), None)
    assert len(faces) == 3 and "3 faces" in readout and panels.count('class="face-panel"') == 3
    monkeypatch.setattr(models.detector, "detect", lambda rgb, **kw: boxes[:1])
    panels = stream_frame(models, _fresh(canvas), session)[4]
    assert panels == ""  # back to one face: the panels clear, once
    assert stream_frame(models, _fresh(canvas), session)[4] == SKIP


# --- timeline ---------------------------------------------------------------------------------------------


def _colour_pixels(image: np.ndarray, name: str) -> np.ndarray:
    """(row, col) of the pixels drawn in an emotion's colour, the legend at the right left out."""
    plot = image[:, :520]
    return np.argwhere((plot == np.array(CLASS_COLOURS[name], np.uint8)).all(axis=2))


def test_timeline_draws_each_emotion_in_its_colour_at_its_level() -> None:
    timeline = Timeline()
    levels = {"happy": 0.7, "sad": 0.2}
    probs = np.array([levels.get(n, 0.02) for n in CLASS_NAMES])
    for i in range(100):
        timeline.add(i / 10, probs)
    image = timeline.render(10.0)
    assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8
    rows_happy, rows_sad = _colour_pixels(image, "happy")[:, 0], _colour_pixels(image, "sad")[:, 0]
    assert len(rows_happy) and len(rows_sad)
    assert np.median(rows_happy) < np.median(rows_sad) - 60  # 70% well above 20% (160 px for 100%)
    cols = _colour_pixels(image, "happy")[:, 1]
    assert cols.max() >= 515 and cols.min() > 300  # the last 10 s of a 30 s window: the right third


def test_timeline_keeps_30_seconds_breaks_lines_at_gaps_and_resets() -> None:
    timeline = Timeline()
    probs = np.full(len(CLASS_NAMES), 1 / len(CLASS_NAMES))
    for t in np.arange(0.0, 40.0, 0.1):
        if not 20.0 < t < 25.0:  # five seconds without a face
            timeline.add(float(t), probs)
    assert timeline.times[0] >= 40.0 - 30.0 - 0.1
    segments = timeline._segments()
    assert len(segments) == 2 and segments[0][0][-1] < 20.1 and segments[1][0][0] > 24.9
    assert all(np.diff(times).max() <= GAP_S for times, _ in segments)
    timeline.reset()
    assert not timeline.times and timeline.due(0.0)
    timeline.render(0.0)
    assert not timeline.due(10.0)  # an empty chart is drawn once, not again and again
    timeline.add(10.0, probs)
    assert timeline.due(10.0)


def test_stream_frame_redraws_the_timeline_a_few_times_per_second_and_resets_on_restart(
    models: ModelManager, real_faces
) -> None:
    scene = face_scene(real_faces["happy"][0])
    *_, chart, session = stream_frame(models, _fresh(scene), None)
    assert isinstance(chart, np.ndarray) and chart.shape == (SIZE[1], SIZE[0], 3)
    assert stream_frame(models, _fresh(scene), session)[5] == SKIP  # drawn a moment ago: not due yet
    assert len(session.timeline.times) == 2
    session.timeline.drawn_at -= session.timeline.every_s
    assert isinstance(stream_frame(models, _fresh(scene), session)[5], np.ndarray)
    assert stream_frame(models, _fresh(scene), session, show_timeline=False)[5] == SKIP
    session.last_frame_at -= 10.0  # the stream stopped for a while: a new stream starts afresh
    stream_frame(models, _fresh(scene), session)
    assert len(session.timeline.times) == 1
    empty = stream_frame(models, None, session)
    assert empty[4] == SKIP and empty[5] == SKIP and isinstance(empty[6], LiveSession)


def test_readout_and_json_are_sent_a_few_times_per_second(models: ModelManager, real_faces) -> None:
    scene = face_scene(real_faces["happy"][0])
    _, label, readout, faces, _, _, session = stream_frame(models, _fresh(scene), None)
    assert "1 face" in readout and len(faces) == 1
    annotated, label, readout, faces = stream_frame(models, _fresh(scene), session)[:4]
    assert isinstance(annotated, np.ndarray) and set(label) == {display(c) for c in CLASS_NAMES}  # every frame
    assert readout == SKIP and faces == SKIP  # text: not again so soon
    session.text_at -= TEXT_EVERY_S
    assert "1 face" in stream_frame(models, _fresh(scene), session)[2]


def test_the_same_frame_sent_twice_is_analyzed_once(models: ModelManager, real_faces) -> None:
    scene = face_scene(real_faces["sad"][0])
    session = stream_frame(models, scene, None)[-1]
    *outputs, same = stream_frame(models, scene.copy(), session)
    assert outputs == [SKIP] * 6 and same is session and len(session.timeline.times) == 1
    moved = np.roll(scene, 2, axis=1)
    assert isinstance(stream_frame(models, moved, session)[0], np.ndarray)


def test_a_live_stream_picks_up_a_face_too_small_for_the_whole_frame(models: ModelManager, real_faces) -> None:
    scene, _ = compose([real_faces["happy"][1]], [(480, 340)], size=96)  # 3/20 of the width, bottom right
    session = None
    for _ in range(14):  # a new corner tile every third frame: the bottom-right one comes up in the tenth
        session = stream_frame(models, _fresh(scene), session)[-1]
    assert session.tracker.tiles is not None and len(session.tracker.ids) == 1


# --- speed settings ---------------------------------------------------------------------------------------


def test_defaults_use_every_core_and_let_the_stream_beat_20_frames_per_second() -> None:
    config = AppConfig()
    assert config.threads == cpu_cores()
    assert config.stream_every <= 1 / 30  # the browser may send a frame as fast as a 30 fps camera makes them


def test_ui_training_run_yields_to_live_inference(tmp_path: Path) -> None:
    data = make_folder_dataset(tmp_path / "data", per_class=2)
    runner = TrainingRunner(tmp_path / "runs", nice=10)
    assert runner.threads == max(1, cpu_cores() // 2)
    before = os.getpriority(os.PRIO_PROCESS, 0)
    run = runner.start(TrainRequest(data=data, model="cnn", epochs=1000, batch_size=8))
    try:
        args = run.process.args
        assert args[args.index("--threads") + 1] == str(runner.threads)  # fewer threads ...
        assert os.getpriority(os.PRIO_PROCESS, run.pid) == min(19, before + 10)  # ... at a lower priority
        autogroup = Path(f"/proc/{run.pid}/autogroup")  # Linux: its own session's scheduling group is lowered too
        if autogroup.exists():
            assert autogroup.read_text().split()[-1] == "10"
    finally:
        runner.stop()
    assert TrainingRunner(tmp_path / "runs", threads=3).threads == 3
    deadline = time.time() + 30
    while run.running and time.time() < deadline:
        time.sleep(0.1)
    assert not run.running
