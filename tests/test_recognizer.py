"""The recognizer API (real detector, tiny real classifier), temporal smoothing, file prediction and the overlay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_faces import compose, inside, triangle_frames

from emotion.data.labels import CLASS_NAMES
from emotion.inference.classifier import EmotionClassifier
from emotion.inference.faces import Box, FaceDetector
from emotion.inference.overlay import draw_faces
from emotion.inference.recognizer import STAGES, FaceTracker, Recognizer, predict_files


@pytest.fixture(scope="module")
def classifier(tiny_cnn_checkpoint: Path) -> EmotionClassifier:
    return EmotionClassifier.from_checkpoint(tiny_cnn_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def recognizer(classifier: EmotionClassifier, face_model_path: Path) -> Recognizer:
    return Recognizer(classifier, FaceDetector(str(face_model_path)))


def check_face(face: dict, frame_shape: tuple[int, ...]) -> None:
    """One result follows the JSON schema and describes a box inside the frame."""
    assert set(face) == {"box", "eyes", "label", "score", "probabilities"}
    x, y, w, h = face["box"]
    assert all(isinstance(v, int) for v in face["box"]) and w > 0 and h > 0
    assert x >= 0 and y >= 0 and x + w <= frame_shape[1] and y + h <= frame_shape[0]
    probs = face["probabilities"]
    assert list(probs) == list(CLASS_NAMES) and abs(sum(probs.values()) - 1) < 1e-4
    assert face["label"] == max(probs, key=probs.get) and face["score"] == probs[face["label"]]


# --- analyze ----------------------------------------------------------------------------------------


def test_photos_get_the_small_face_pass_and_video_frames_do_not(classifier: EmotionClassifier) -> None:
    asked = []

    class Detector:
        def detect(self, rgb: np.ndarray, small_faces: bool = False) -> list[Box]:
            asked.append(small_faces)
            return [Box(0, 0, 48, 48)]

    recognizer = Recognizer(classifier, Detector())
    rgb = np.zeros((48, 48, 3), np.uint8)
    recognizer.analyze(rgb)
    recognizer.analyze(rgb, tracker=FaceTracker())
    recognizer.analyze(rgb, small_faces=False)
    recognizer.analyze(rgb, tracker=FaceTracker(), small_faces=True)
    assert asked == [True, False, False, True]


def test_a_live_stream_scans_a_tile_a_frame_and_keeps_scanning_where_a_small_face_is(
    classifier: EmotionClassifier,
) -> None:
    asked = []

    class Detector:
        def detect(self, rgb: np.ndarray, small_faces: bool = False, tiles: tuple = ()) -> list[Box]:
            asked.append(list(tiles))
            return [Box(0, 0, 48, 48, tile=2)] if 2 in tiles else [Box(0, 0, 48, 48)]

    recognizer = Recognizer(classifier, Detector())
    tracker = FaceTracker(scan_tiles=True)
    for _ in range(10):
        recognizer.analyze(np.zeros((48, 48, 3), np.uint8), tracker=tracker)
    # A new tile every third frame; tile 2 found a face, so it is scanned every frame since.
    assert asked == [[0], [], [], [1], [], [], [2], [2], [2], [2, 3]]
    tracker.reset()
    recognizer.analyze(np.zeros((48, 48, 3), np.uint8), tracker=tracker)
    assert asked[-1] == [0]


def test_a_small_face_in_a_live_stream_is_found_within_twelve_frames_then_every_frame(
    classifier: EmotionClassifier, face_model_path: Path, real_faces: dict
) -> None:
    recognizer = Recognizer(classifier, FaceDetector(str(face_model_path)))
    rgb, _ = compose([real_faces["happy"][1]], [(480, 340)], size=96)  # too small for the whole frame
    assert recognizer.detector.detect(rgb) == []
    tracker = FaceTracker(scan_tiles=True)
    found = [len(recognizer.analyze(rgb, tracker=tracker)) for _ in range(14)]
    first = found.index(1)  # its tile (bottom right) comes up in the tenth frame
    assert first < 12 and found[first:] == [1] * (14 - first), found


def test_analyze_returns_one_result_per_face(
    recognizer: Recognizer, real_faces: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls, counts = [], []
    original = recognizer.classifier.predict_faces
    monkeypatch.setattr(
        recognizer.classifier,
        "predict_faces",
        lambda crops, member=None, **kw: calls.append(len(crops)) or original(crops, member, **kw),
    )
    for rgb, placed in triangle_frames(real_faces)[:3]:
        timings: dict[str, float] = {}
        faces = recognizer.analyze(rgb, timings=timings)
        assert len(faces) == len(recognizer.detector.detect(rgb)) >= 2
        counts.append(len(faces))
        areas = [f["box"][2] * f["box"][3] for f in faces]
        assert areas == sorted(areas, reverse=True)
        for face in faces:
            check_face(face, rgb.shape)
            assert max(inside(Box(*face["box"]), p) for p in placed) > 0.7
        assert set(timings) == set(STAGES) and all(v >= 0 for v in timings.values())
    assert calls == counts  # one batched forward per frame with all its faces, never one per face


def test_whole_image_mode(classifier: EmotionClassifier, real_faces: dict) -> None:
    face = real_faces["happy"][0]
    faces = Recognizer(classifier, None).analyze(face, whole_image=True)
    assert len(faces) == 1 and faces[0]["box"] == [0, 0, 48, 48]
    check_face(faces[0], face.shape)
    # The same face analysed as a whole image gives the classifier's own answer for it.
    assert np.allclose(list(faces[0]["probabilities"].values()), classifier.predict_faces([face])[0], atol=1e-5)
    with pytest.raises(RuntimeError, match="whole_image"):
        Recognizer(classifier, None).analyze(face)


@pytest.mark.parametrize("bad", [None, np.zeros((0, 0, 3), np.uint8), np.zeros((10, 0), np.uint8)])
def test_bad_input_is_a_clear_error(recognizer: Recognizer, bad) -> None:
    with pytest.raises(ValueError, match="image"):
        recognizer.analyze(bad)


def test_any_colour_layout_and_size(recognizer: Recognizer, real_faces: dict) -> None:
    rgb, _ = triangle_frames(real_faces)[0]
    expected = len(recognizer.analyze(rgb))
    gray = rgb[:, :, 0]
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert len(recognizer.analyze(gray)) == expected
    assert len(recognizer.analyze(rgba)) == expected
    assert recognizer.analyze(np.full((480, 640, 3), 128, np.uint8)) == []  # no face, no result
    assert recognizer.analyze(np.zeros((1, 1), np.uint8)) == []
    huge = np.full((1000, 8000, 3), 128, np.uint8)
    assert recognizer.analyze(huge) == []
    assert recognizer.analyze(huge, whole_image=True)[0]["box"] == [0, 0, 8000, 1000]


def test_many_faces(
    classifier: EmotionClassifier, real_faces: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Twelve faces in a 4x3 grid. BlazeFace short-range is built for one or a few close faces (faces here
    # are 19% of the frame width), so this uses the Haar cascade, which finds most of them.
    monkeypatch.delenv("EMOTION_FACE_MODEL", raising=False)
    pool = [f for name in CLASS_NAMES for f in real_faces[name]]
    size, positions = 150, [(20 + c * 195, 15 + r * 195) for r in range(3) for c in range(4)]
    rgb, placed = compose(pool[:12], positions, size=size, shape=(600, 800))
    all_faces = Recognizer(classifier, FaceDetector(allow_download=False)).analyze(rgb)
    assert 8 <= len(all_faces) <= 12
    for face in all_faces:
        check_face(face, rgb.shape)
    capped = Recognizer(classifier, FaceDetector(allow_download=False, max_faces=5)).analyze(rgb)
    assert capped == all_faces[:5]


# --- temporal smoothing -----------------------------------------------------------------------------


def onehot(i: int, noise: float = 0.0) -> np.ndarray:
    p = np.full(len(CLASS_NAMES), noise / (len(CLASS_NAMES) - 1), np.float32)
    p[i] = 1.0 - noise
    return p


def test_tracker_smoothing_reduces_flicker() -> None:
    tracker = FaceTracker(alpha=0.3)
    box = Box(100, 100, 120, 120)
    raw_labels, smooth_labels = [], []
    for frame in range(20):
        # Mostly happy, with a one-frame "sad" blip every fourth frame.
        raw = onehot(CLASS_NAMES.index("sad" if frame % 4 == 3 else "happy"), noise=0.2)
        raw_labels.append(int(raw.argmax()))
        jitter = Box(box.x + frame % 3, box.y - frame % 2, box.w, box.h)  # detector boxes wobble a little
        smooth_labels.append(int(tracker.update([jitter], raw[None])[0].argmax()))
    assert len(set(raw_labels)) == 2 and set(smooth_labels) == {CLASS_NAMES.index("happy")}


def test_tracker_keeps_identities_by_overlap() -> None:
    tracker = FaceTracker(alpha=0.5)
    left, right = Box(0, 0, 100, 100), Box(300, 0, 100, 100)
    tracker.update([left, right], np.stack([onehot(0), onehot(1)]))
    # Next frame lists the faces the other way round: each still blends with its own history.
    out = tracker.update([right, left], np.stack([onehot(2), onehot(3)]))
    assert np.allclose(out[0], 0.5 * onehot(2) + 0.5 * onehot(1))
    assert np.allclose(out[1], 0.5 * onehot(3) + 0.5 * onehot(0))


def test_tracker_new_faces_start_fresh_and_stale_ones_expire() -> None:
    tracker = FaceTracker(alpha=0.5, max_age=2)
    a, b = Box(0, 0, 100, 100), Box(500, 0, 100, 100)
    tracker.update([a], onehot(0)[None])
    out = tracker.update([a, b], np.stack([onehot(1), onehot(2)]))
    assert np.allclose(out[1], onehot(2))  # b is new: its own probabilities, untouched
    for _ in range(2):  # a is missing for max_age frames: still remembered
        tracker.update([b], onehot(2)[None])
    assert not np.allclose(tracker.update([a], onehot(3)[None])[0], onehot(3))
    for _ in range(3):  # missing for longer than max_age: forgotten
        tracker.update([], np.zeros((0, len(CLASS_NAMES)), np.float32))
    assert np.allclose(tracker.update([a], onehot(3)[None])[0], onehot(3))
    assert len(tracker.tracks) == 1


def test_tracker_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        FaceTracker(alpha=0.0)
    with pytest.raises(ValueError, match="boxes"):
        FaceTracker().update([Box(0, 0, 10, 10)], np.zeros((2, len(CLASS_NAMES))))


def test_analyze_with_tracker(recognizer: Recognizer, real_faces: dict) -> None:
    rgb, _ = triangle_frames(real_faces)[1]
    tracker = FaceTracker(alpha=0.5)
    first = recognizer.analyze(rgb, tracker=tracker)
    again = recognizer.analyze(rgb, tracker=tracker)  # a still scene: smoothing changes nothing
    assert [f["box"] for f in again] == [f["box"] for f in first]
    for f, g in zip(first, again, strict=False):
        assert np.allclose(list(f["probabilities"].values()), list(g["probabilities"].values()), atol=1e-5)
    assert len(tracker.tracks) == len(first)


# --- files and overlay ------------------------------------------------------------------------------


def test_predict_files(recognizer: Recognizer, real_faces: dict, tmp_path: Path) -> None:
    rgb, _ = triangle_frames(real_faces)[0]
    Image.fromarray(rgb).save(tmp_path / "group.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(tmp_path / "group_rgba.png")
    Image.fromarray(np.full((240, 320), 90, np.uint8)).save(tmp_path / "blank.jpg")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    paths = [str(tmp_path / n) for n in ("group.png", "corrupt.jpg", "blank.jpg", "missing.png", "group_rgba.png")]

    results = predict_files(paths, recognizer)
    json.dumps(results)  # the CLI prints this as JSON
    assert [r["image"] for r in results] == paths
    group, corrupt, blank, missing, rgba = results
    assert len(group["faces"]) >= 2 and rgba["faces"] == group["faces"]
    for face in group["faces"]:
        check_face(face, rgb.shape)
    assert blank == {"image": paths[2], "faces": []}
    for bad in (corrupt, missing):
        assert set(bad) == {"image", "error"} and bad["error"].startswith("cannot read image")

    whole = predict_files(paths[2:3], recognizer, whole_image=True)
    assert whole[0]["faces"][0]["box"] == [0, 0, 320, 240]


def test_overlay_draws_on_a_copy(real_faces: dict, recognizer: Recognizer) -> None:
    rgb, _ = triangle_frames(real_faces)[0]
    before = rgb.copy()
    faces = recognizer.analyze(rgb)
    edge = dict(faces[0], box=[600, 0, 40, 30])  # a label at the frame's corner stays inside it
    drawn = draw_faces(rgb, faces + [edge])
    assert (rgb == before).all() and drawn.shape == rgb.shape and drawn.dtype == np.uint8
    x, y, w, h = faces[0]["box"]
    assert (drawn[y : y + h, x : x + w] != rgb[y : y + h, x : x + w]).any()
    assert draw_faces(rgb[:, :, 0], []).shape == rgb.shape  # grayscale in, RGB out
    small = draw_faces(np.zeros((60, 80, 3), np.uint8), [dict(faces[0], box=[5, 5, 40, 40])])
    assert small.any()
