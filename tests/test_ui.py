"""The app's handlers called directly: webcam frames, photo uploads, model switching, dataset paths, training runs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pandas as pd
import pytest
from conftest import make_folder_dataset
from PIL import Image

from emotion.app.live import FACE_HOLD_FRAMES, LiveSession, analyze_frame
from emotion.app.model_panel import ModelManager
from emotion.app.training_runner import TrainingRunner, TrainRequest
from emotion.app.training_tab import (
    list_datasets,
    poll_training,
    resolve_clip_weights,
    resolve_dataset,
    start_training,
    stop_training,
    use_trained_model,
)
from emotion.app.upload import MAX_FACE_LABELS, PhotoError, analyze_photo, load_photo
from emotion.data.labels import CLASS_NAMES, display
from emotion.inference.faces import Box
from emotion.models.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parent.parent
SKIP = gr.skip()
DISPLAY_NAMES = {display(c) for c in CLASS_NAMES}


def _wait(run, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while run.running and time.time() < deadline:
        time.sleep(0.5)
    assert not run.running, f"training did not finish in {timeout}s:\n{run.log_tail()}"


# --- Live tab -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [None, np.zeros((0, 0, 3), np.uint8)], ids=["none", "empty"])
def test_empty_frames_leave_the_outputs_alone(models: ModelManager, frame) -> None:
    *outputs, session = analyze_frame(models, frame, None)
    assert outputs == [SKIP] * 4
    assert isinstance(session, LiveSession)


def test_frame_with_a_face_gives_annotation_probabilities_and_fps(models: ModelManager, scene: np.ndarray) -> None:
    annotated, label, readout, faces, session = analyze_frame(models, scene, None)
    assert annotated.shape == scene.shape and not np.array_equal(annotated, scene)  # a box was drawn
    assert set(label) == DISPLAY_NAMES and sum(label.values()) == pytest.approx(1.0, abs=1e-3)
    assert len(faces) == 1 and set(faces[0]) >= {"box", "label", "score", "probabilities"}
    assert "1 face" in readout and "ms per frame" in readout
    time.sleep(0.05)
    *_, readout, _, same = analyze_frame(models, scene[:, :, 0], session)  # grayscale frames work too
    assert same is session and session.fps is not None
    assert f"{session.fps:.1f} FPS" in readout


def test_frame_without_a_face_says_so_and_bars_outlast_brief_misses(models: ModelManager, scene: np.ndarray) -> None:
    blank = np.full((480, 640, 3), 120, np.uint8)
    annotated, label, readout, faces, _ = analyze_frame(models, blank, None)
    assert annotated.shape == (480, 640, 3) and label is None and faces == []
    assert "no face in view" in readout
    session = analyze_frame(models, scene, None)[-1]
    held = [analyze_frame(models, blank, session)[1] for _ in range(FACE_HOLD_FRAMES + 1)]
    assert held[:-1] == [SKIP] * FACE_HOLD_FRAMES and held[-1] is None


# --- Upload tab -----------------------------------------------------------------------------------------------------


def _labels(outputs: tuple) -> list[gr.Label]:
    return [lbl for lbl in outputs[3:] if lbl.visible]


def _classes(label: gr.Label) -> set[str]:
    return {c["label"] for c in label.value["confidences"]}


@pytest.mark.parametrize("mode", ["L", "RGBA", "RGB"])
def test_photo_in_any_mode(models: ModelManager, scene: np.ndarray, mode: str, tmp_path: Path) -> None:
    image = Image.fromarray(scene).convert(mode)
    path = tmp_path / f"photo.{'png' if mode == 'RGBA' else 'webp' if mode == 'L' else 'jpg'}"
    image.save(path)
    outputs = analyze_photo(models, {"path": str(path)})
    annotated, message, faces = outputs[:3]
    assert annotated.shape == scene.shape
    assert len(faces) == 1 and message.startswith("Found 1 face")
    labels = _labels(outputs)
    assert len(labels) == 1 and _classes(labels[0]) == DISPLAY_NAMES


def test_transparent_photo_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((40, 60, 4), np.uint8)  # fully transparent black
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    rgb, size = load_photo(str(tmp_path / "clear.png"), 1920)
    assert size == (60, 40) and rgb.shape == (40, 60, 3) and rgb.min() == 255


def test_huge_photo_is_downscaled_first(models: ModelManager, scene: np.ndarray, tmp_path: Path) -> None:
    huge = cv2.resize(scene, (8000, 6000), interpolation=cv2.INTER_LINEAR)
    Image.fromarray(huge).save(tmp_path / "huge.jpg", quality=80)
    annotated, message, faces = analyze_photo(models, str(tmp_path / "huge.jpg"), max_side=1920)[:3]
    assert max(annotated.shape[:2]) <= 1920 and len(faces) == 1
    assert "downscaled from 8000×6000" in message


@pytest.mark.parametrize(
    "content", [b"this is not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 64], ids=["text", "bad-png"]
)
def test_corrupt_upload_gets_a_message(models: ModelManager, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.warns(UserWarning, match="could not be read"):
        annotated, message, faces, *labels = analyze_photo(models, str(path))
    assert annotated is None and faces == [] and "could not be read as an image" in message
    assert not any(lbl.visible for lbl in labels)


def test_truncated_jpeg_is_refused(models: ModelManager, scene: np.ndarray, tmp_path: Path) -> None:
    Image.fromarray(scene).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(PhotoError):
        load_photo(str(tmp_path / "cut.jpg"), 1920)


def test_no_face_is_said_politely_and_whole_image_is_offered(models: ModelManager) -> None:
    blank = np.full((300, 400, 3), 200, np.uint8)
    annotated, message, faces = analyze_photo(models, blank)[:3]
    assert faces == [] and "No face found" in message and "Classify the whole image" in message
    outputs = analyze_photo(models, blank, whole_image=True)
    assert len(outputs[2]) == 1 and outputs[2][0]["box"] == [0, 0, 400, 300]
    assert len(_labels(outputs)) == 1


def test_many_faces_list_all_in_json_and_bars_for_the_largest(
    models: ModelManager, real_faces, monkeypatch: pytest.MonkeyPatch
) -> None:
    # BlazeFace short-range sees a frame at 128x128, so a crowd of a dozen faces is below its reach; the detector
    # stands in with the grid's boxes, and everything after detection runs for real.
    faces = [f for name in ("happy", "fear", "sad", "angry") for f in real_faces[name][:3]]
    canvas = np.full((3 * 150, 4 * 150, 3), 170, np.uint8)
    boxes = []
    for i, face in enumerate(faces):
        r, c = divmod(i, 4)
        size = 120 - i  # distinct sizes, so "largest first" has one answer
        canvas[r * 150 : r * 150 + size, c * 150 : c * 150 + size] = cv2.resize(face, (size, size))[:, :, None]
        boxes.append(Box(c * 150, r * 150, size, size, 0.9))
    monkeypatch.setattr(models.detector, "detect", lambda rgb, **kw: boxes)
    outputs = analyze_photo(models, canvas)
    found = outputs[2]
    assert [f["box"] for f in found] == [[b.x, b.y, b.w, b.h] for b in boxes]
    assert f"Found {len(boxes)} faces" in outputs[1] and f"the {MAX_FACE_LABELS} largest" in outputs[1]
    assert len(_labels(outputs)) == MAX_FACE_LABELS


def test_small_face_is_flagged(models: ModelManager, real_faces, monkeypatch: pytest.MonkeyPatch) -> None:
    canvas = np.full((240, 320, 3), 170, np.uint8)
    canvas[100:130, 150:180] = cv2.resize(real_faces["happy"][0], (30, 30))[:, :, None]
    monkeypatch.setattr(models.detector, "detect", lambda rgb, **kw: [Box(150, 100, 30, 30, 0.8)])
    outputs = analyze_photo(models, canvas)
    assert len(outputs[2]) == 1 and "Face 1 is smaller than" in outputs[1] and "less reliable" in outputs[1]


# --- Model panel ----------------------------------------------------------------------------------------------------


def test_switching_models(models: ModelManager, tiny_cnn_checkpoint: Path) -> None:
    original = models.active_path
    models.assets_dir.mkdir(parents=True, exist_ok=True)
    junk = models.assets_dir / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    copy = models.runs_dir / "run1" / "best.pt"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(tiny_cnn_checkpoint.read_bytes())
    assert {junk.resolve(), copy.resolve(), original} <= set(models.checkpoints())

    with pytest.raises(CheckpointError, match="not a readable emotion checkpoint"):
        models.switch(junk)
    assert models.active_path == original  # a failed switch keeps the running model
    with pytest.raises(CheckpointError, match="not one of the offered"):
        models.switch(ROOT / "pytest.ini")
    previous = models.recognizer
    assert models.switch(copy).startswith("cnn (best.pt), ")  # then the precision and engine this CPU runs it with
    assert models.recognizer is not previous and models.recognizer.detector is previous.detector
    assert "cnn (best.pt)" in models.describe() and "BlazeFace" in models.describe()
    assert "not calibrated" in models.describe()  # the tiny checkpoint stores no temperature
    models.recognizer.classifier.temperature = 0.7
    assert "calibrated (T = 0.70)" in models.describe()
    copy.unlink()  # listed a moment ago, gone now
    models.switch(original)
    with pytest.raises(CheckpointError):
        models.switch(copy)


def test_missing_default_checkpoint_still_starts(face_model_path: Path, tmp_path: Path) -> None:
    manager = ModelManager(tmp_path / "absent.pt", face_model_path, "cpu", tmp_path, tmp_path, ROOT)
    assert manager.recognizer is None and "does not exist" in manager.describe()
    outputs = analyze_photo(manager, np.full((100, 100, 3), 128, np.uint8))
    assert "No emotion model is loaded" in outputs[1]
    _, label, readout, _, _ = analyze_frame(manager, np.full((100, 100, 3), 128, np.uint8), None)
    assert label is None and "No emotion model is loaded" in readout


# --- Training tab ---------------------------------------------------------------------------------------------------


def test_dataset_paths_stay_under_the_data_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_folder_dataset(root / "tiny", per_class=1, splits=("train",))
    outside = make_folder_dataset(tmp_path / "outside", per_class=1, splits=("train",))
    (root / "escape").symlink_to(outside)
    (tmp_path / "weights.bin").write_bytes(b"x")

    assert list_datasets(root) == ["tiny"]  # the symlink leads outside, so it is not offered
    assert resolve_dataset(root, "tiny") == (root / "tiny").resolve()
    for bad in ("../outside", str(outside), "escape", "tiny/../../outside"):
        with pytest.raises(ValueError, match="inside the data root"):
            resolve_dataset(root, bad)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_dataset(root, "nope")
    with pytest.raises(ValueError, match="no train/"):
        resolve_dataset(root, "tiny/train")
    assert resolve_clip_weights(root, " random ") == "random" and resolve_clip_weights(root, "") is None
    with pytest.raises(ValueError, match="inside the data root"):
        resolve_clip_weights(root, "../weights.bin")


@pytest.fixture
def runner(tmp_path: Path):
    r = TrainingRunner(tmp_path / "runs")
    yield r
    r.stop()


def test_training_run_to_the_end_and_use_its_model(
    runner: TrainingRunner, models: ModelManager, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    make_folder_dataset(root / "tiny", per_class=4)
    message, timer = start_training(runner, root, "tiny", "cnn", 1, 8, 1e-3, 1e-5, 0, "", 0)
    assert message.startswith("Started") and timer.active
    run = runner.current
    assert run.run_dir.parent == tmp_path / "runs" and run.run_dir.name.startswith("ui-")
    assert os.getpgid(run.pid) == run.pid  # its own process group, so Stop reaches everything it starts
    _wait(run)
    assert run.state() == "done", run.log_tail()
    progress, figure, log_text, summary, table, image, use, timer, seen = poll_training(runner, None)
    assert "Done" in progress and figure is not None and log_text
    assert "Validation accuracy" in summary and image.ndim == 3
    assert isinstance(table, pd.DataFrame) and len(table) == len(CLASS_NAMES)
    assert use.visible and not timer.active
    # An unchanged run is not redrawn on the next tick.
    again = poll_training(runner, seen)
    assert again[1] == SKIP and again[4] == SKIP

    models.runs_dir = runner.runs_dir
    original = models.active_path
    try:
        use_trained_model(runner, models)
        assert models.active_path == run.best_checkpoint.resolve()
    finally:
        models.switch(original)


def test_stop_ends_the_whole_process_group(runner: TrainingRunner, tmp_path: Path) -> None:
    data = make_folder_dataset(tmp_path / "data", per_class=4, splits=("train", "test"))
    run = runner.start(TrainRequest(data=data, model="cnn", epochs=1000, batch_size=8))
    with pytest.raises(RuntimeError, match="already in progress"):
        runner.start(TrainRequest(data=data, model="cnn", epochs=1))
    deadline = time.time() + 120
    while run.status().get("state") != "training" and run.running and time.time() < deadline:
        time.sleep(0.3)
    assert stop_training(runner).startswith("Stopped")
    assert not run.running and run.state() == "stopped"
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, 0)
    assert "Stopped" in poll_training(runner, None)[0]
    assert stop_training(runner) == "No training run is in progress."


def test_crashed_run_shows_its_error(runner: TrainingRunner, tmp_path: Path) -> None:
    data = make_folder_dataset(tmp_path / "data", per_class=2)
    run = runner.start(TrainRequest(data=data, model="cnn", epochs=1, batch_size=4096))
    _wait(run)
    assert run.state() == "failed"
    assert "batch size" in run.error() and "exit code 2" in run.error()
    progress = poll_training(runner, None)[0]
    assert "Training failed" in progress and "lower --batch-size" in progress


def test_clip_run_without_weights_explains_what_to_do(
    runner: TrainingRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fail the weights download at once instead of after network retries
    monkeypatch.delenv("EMOTION_CLIP_WEIGHTS", raising=False)
    root = make_folder_dataset(tmp_path / "data" / "tiny", per_class=2).parent
    start_training(runner, root, "tiny", "clip", 1, 8, 1e-3, 1e-5, 0, "", 0)
    _wait(runner.current)
    progress = poll_training(runner, None)[0]
    assert "Training failed" in progress and "could not download CLIP" in progress
    assert "fill in **CLIP weights file**" in progress


def test_bad_form_values_are_refused(runner: TrainingRunner, tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "data" / "tiny", per_class=1, splits=("train",)).parent
    with pytest.warns(UserWarning, match="at least 1"):
        message, timer = start_training(runner, root, "tiny", "cnn", 0, 8, 1e-3, 1e-5, 0, "", 0)
    assert message.startswith("⚠️") and not timer.active and runner.current is None
    with pytest.warns(UserWarning, match="inside the data root"):
        start_training(runner, root, "../..", "cnn", 1, 8, 1e-3, 1e-5, 0, "", 0)
