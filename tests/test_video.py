"""Videos end to end: synthetic clips of real FER2013 faces through the package API and the CLI.

The clips are written with cv2.VideoWriter (mp4v) in tmp_path; the CSV is checked against the faces placed
in them (count, ids, positions) and against single-image predictions of the same decoded frames. Bad
inputs (not a video, empty, truncated, no faces, a still image) must give one clear line and exit code 2.
The Video tab is tested in test_video_tab.py and test_browser_video.py.
"""

from __future__ import annotations

import csv
import json
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from make_clip import face_scene, load_faces

import train_cli
from emotion.data.labels import CLASS_NAMES
from emotion.inference.classifier import EmotionClassifier
from emotion.inference.faces import FaceDetector
from emotion.inference.recognizer import Recognizer
from emotion.video.analysis import (
    VideoAnalyzer,
    VideoConfig,
    VideoError,
    VideoReader,
    analyze_video,
    benchmark_fps,
    write_clip,
)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "assets" / "emotion_cnn.pt"
FPS = 15
FACE_PX = 160  # per face on a 320x480 half frame: BlazeFace finds every pair of the clip faces at this size
OUTPUTS = ("annotated.mp4", "faces.csv", "timeline.png", "summary.json")


# ---------------------------------------------------------------- clips


def clip_faces() -> list[np.ndarray]:
    """The FER2013 faces of tests/make_clip.py (happy, surprise, angry, neutral); skips without ../shared."""
    if not (ROOT.parent / "shared" / "fer2013").is_dir():
        pytest.skip("../shared/fer2013 is not available")
    return load_faces()


@pytest.fixture(scope="module")
def faces() -> list[np.ndarray]:
    return clip_faces()


def half(face: np.ndarray | None, i: int) -> np.ndarray:
    """A 320x480 half frame with ``face`` drifting a pixel per frame, or plain grey without one."""
    if face is None:
        return np.full((480, 320, 3), 160, np.uint8)
    return face_scene(face, size=(320, 480), face_px=FACE_PX, centre=(160 + i % 6, 240 + i % 4))


def two_halves(left: np.ndarray | None, right: np.ndarray | None, frames: int) -> list[np.ndarray]:
    return [np.hstack([half(left, i), half(right, i)]) for i in range(frames)]


def one_face_clip(path: Path, face: np.ndarray, frames: int = 20) -> Path:
    return write_clip(path, (face_scene(face, centre=(320 + i, 240)) for i in range(frames)), FPS)


def enter_leave_frames(faces: list[np.ndarray]) -> list[np.ndarray]:
    """Face A alone on the left, then B joins on the right, then A leaves: 15 frames each."""
    a, b = faces[0], faces[1]
    return two_halves(a, None, 15) + two_halves(a, b, 15) + two_halves(None, b, 15)


def read_rows(out: Path) -> list[dict]:
    with open(out / "faces.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def decoded_frames(path: Path) -> Iterator[np.ndarray]:
    """The clip's frames as RGB, decoded independently of emotion.video.analysis."""
    cap = cv2.VideoCapture(str(path))
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    cap.release()


def frame_count(path: Path) -> int:
    return sum(1 for _ in decoded_frames(path))


def centre_x(row: dict) -> float:
    return int(row["x"]) + int(row["w"]) / 2


@pytest.fixture(scope="module")
def recognizer(face_model_path: Path, tiny_cnn_checkpoint: Path) -> Iterator[Recognizer]:
    # The shipped model gives labels that differ between faces, which makes label agreement a real check.
    checkpoint = SHIPPED if SHIPPED.is_file() else tiny_cnn_checkpoint
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI runs: decoding and encoding threads use the other core
    try:
        yield Recognizer(
            EmotionClassifier.from_checkpoint(checkpoint, device="cpu"), FaceDetector(str(face_model_path))
        )
    finally:
        torch.set_num_threads(threads)


RAW = VideoConfig(smoothing=1.0)  # raw per-frame probabilities: rows must equal single-image predictions exactly


def assert_rows_match_single_images(rows: list[dict], clip: Path, recognizer: Recognizer, every: int = 1) -> None:
    by_frame: dict[int, list[dict]] = {}
    for row in rows:
        by_frame.setdefault(int(row["frame"]), []).append(row)
    for index, rgb in enumerate(decoded_frames(clip)):
        if index % every:
            assert index not in by_frame
            continue
        expected = recognizer.analyze(rgb)
        got = by_frame.get(index, [])
        assert [r["label"] for r in got] == [f["label"] for f in expected], f"frame {index}"
        assert [[int(r[k]) for k in "xywh"] for r in got] == [f["box"] for f in expected], f"frame {index}"
        for r, f in zip(got, expected, strict=False):
            assert [float(r[c]) for c in CLASS_NAMES] == pytest.approx(
                [f["probabilities"][c] for c in CLASS_NAMES], abs=1e-3
            )


# ---------------------------------------------------------------- package API


def test_one_face_gets_one_id_and_single_image_labels(recognizer, faces, tmp_path: Path) -> None:
    clip = one_face_clip(tmp_path / "one.mp4", faces[0])
    result = analyze_video(clip, tmp_path / "out", recognizer, RAW)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUTS)
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 20 and {r["face_id"] for r in rows} == {"1"}
    assert [int(r["frame"]) for r in rows] == list(range(20))
    assert [float(r["time_s"]) for r in rows] == pytest.approx([i / FPS for i in range(20)], abs=1e-3)
    for i, r in enumerate(rows):  # the 200 px face pasted at (320 + i, 240)
        assert abs(centre_x(r) - (320 + i)) < 40 and 120 < int(r["w"]) < 260
    assert_rows_match_single_images(rows, clip, recognizer)
    assert result.frames == 20 and result.analyzed_frames == 20 and not result.truncated and result.problem() is None
    assert frame_count(result.annotated) == 20


def test_two_faces_keep_their_ids_and_sides(recognizer, faces, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "two.mp4", two_halves(faces[0], faces[1], 20), FPS)
    analyze_video(clip, tmp_path / "out", recognizer, RAW)
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 40
    sides = {r["face_id"]: set() for r in rows}
    for r in rows:
        sides[r["face_id"]].add(centre_x(r) > 320)
    assert sorted(sides) == ["1", "2"] and all(len(s) == 1 for s in sides.values())  # each id stays on its side
    assert_rows_match_single_images(rows, clip, recognizer)


def test_faces_that_enter_and_leave(recognizer, faces, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "enter_leave.mp4", enter_leave_frames(faces), FPS)
    result = analyze_video(clip, tmp_path / "out", recognizer, RAW)
    rows = read_rows(tmp_path / "out")
    frames_of = {fid: [int(r["frame"]) for r in rows if r["face_id"] == fid] for fid in {r["face_id"] for r in rows}}
    assert sorted(frames_of) == ["1", "2"]
    assert frames_of["1"] == list(range(0, 30)) and all(centre_x(r) < 320 for r in rows if r["face_id"] == "1")
    assert frames_of["2"] == list(range(15, 45)) and all(centre_x(r) > 320 for r in rows if r["face_id"] == "2")
    assert_rows_match_single_images(rows, clip, recognizer)

    summary = json.loads(result.summary.read_text())
    assert summary["video"]["frames"] == 45 and summary["video"]["width"] == 640
    assert [f["face_id"] for f in summary["faces"]] == [1, 2]
    for face, first, last in zip(summary["faces"], (0, 15), (29, 44), strict=False):
        assert face["first_s"] == pytest.approx(first / FPS, abs=1e-3) and face["last_s"] == pytest.approx(
            last / FPS, abs=1e-3
        )
        assert sum(face["share"].values()) == pytest.approx(1.0, abs=1e-3)
        assert face["dominant"] == max(CLASS_NAMES, key=lambda c: face["share"][c])
        labels = [r["label"] for r in rows if r["face_id"] == str(face["face_id"])]
        assert face["share"][face["dominant"]] == pytest.approx(labels.count(face["dominant"]) / len(labels), abs=1e-3)
    assert result.timeline.stat().st_size > 10_000  # two panels of lines, not an empty plot


def test_every_n_analyzes_some_frames_and_keeps_all_in_the_video(recognizer, faces, tmp_path: Path) -> None:
    clip = one_face_clip(tmp_path / "one.mp4", faces[1], frames=21)
    result = analyze_video(clip, tmp_path / "out", recognizer, VideoConfig(every=5, smoothing=1.0))
    rows = read_rows(tmp_path / "out")
    assert [int(r["frame"]) for r in rows] == [0, 5, 10, 15, 20]
    assert_rows_match_single_images(rows, clip, recognizer, every=5)
    assert result.analyzed_frames == 5 and frame_count(result.annotated) == 21


def test_max_side_shrinks_the_analysis_but_boxes_stay_in_source_pixels(recognizer, faces, tmp_path: Path) -> None:
    frames = [cv2.resize(face_scene(faces[0], centre=(300 + i, 240)), (1280, 960)) for i in range(6)]
    clip = write_clip(tmp_path / "big.mp4", frames, FPS)
    result = analyze_video(clip, tmp_path / "out", recognizer, VideoConfig(max_side=640))
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 6 and all(abs(centre_x(r) - 2 * 300) < 100 and int(r["w"]) > 240 for r in rows)
    cap = cv2.VideoCapture(str(result.annotated))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 480)


def test_reader_and_analyzer_stream_for_a_callers_loop(recognizer, faces, tmp_path: Path) -> None:
    clip = one_face_clip(tmp_path / "one.mp4", faces[2], frames=60)
    seen = []
    with VideoReader(clip, prefetch=4) as reader:
        assert (reader.info.width, reader.info.height, reader.info.frame_count) == (640, 480, 60)
        for item in VideoAnalyzer(recognizer).run(reader):
            seen.append(item)
            if len(seen) == 3:
                break
        assert reader.frames_read <= 3 + 4 + 1  # decoded a few frames ahead, never the whole file
    assert [s.frame.index for s in seen] == [0, 1, 2] and all(s.analyzed for s in seen)
    assert all(len(s.faces) == 1 and s.faces[0]["face_id"] == 1 for s in seen)
    assert seen[0].frame.rgb.shape == (480, 640, 3)


def test_benchmark_hook_reports_frames_per_second(recognizer, faces) -> None:
    figures = benchmark_fps(recognizer, face_scene(faces[0]), frames=12)
    assert figures["frames"] == 12 and figures["face_ids"] == 1 and figures["fps"] > 0 and figures["size"] == [640, 480]


# ---------------------------------------------------------------- odd files that must still work


def rewrite_stts(data: bytes, deltas: Sequence[int]) -> bytes:
    """An MP4 whose sample durations are ``deltas`` (a variable frame rate), by rewriting its stts box.

    OpenCV's writer puts the moov box after the media data, so growing it moves no chunk offset; only
    the sizes of the boxes that contain stts change.
    """
    containers = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}

    def find(offset: int, end: int, path: list) -> list | None:
        while offset < end:
            size, kind = struct.unpack(">I4s", data[offset : offset + 8])
            if kind == b"stts":
                return [*path, (offset, size)]
            if kind in containers and (found := find(offset + 8, offset + size, [*path, (offset, size)])):
                return found
            offset += size
        return None

    *parents, (offset, size) = find(0, len(data), [])
    box = struct.pack(">I4sII", 16 + 8 * len(deltas), b"stts", 0, len(deltas)) + b"".join(
        struct.pack(">II", 1, d) for d in deltas
    )
    out = bytearray(data[:offset] + box + data[offset + size :])
    for parent_offset, parent_size in parents:
        struct.pack_into(">I", out, parent_offset, parent_size + len(box) - size)
    return bytes(out)


def test_variable_frame_rate_uses_the_real_timestamps(recognizer, faces, tmp_path: Path) -> None:
    clip = one_face_clip(tmp_path / "cfr.mp4", faces[0], frames=20)
    data = clip.read_bytes()
    stts = data.index(b"stts")  # the type field; then version/flags, entry count, and (count, delta) entries
    delta = struct.unpack(">I", data[stts + 16 : stts + 20])[0]  # ticks per frame at the written 15 fps
    deltas = [delta // 2 if i % 2 else delta * 3 // 2 for i in range(20)]  # 1/30 s and 1/10 s alternately
    vfr = tmp_path / "vfr.mp4"
    vfr.write_bytes(rewrite_stts(data, deltas))
    result = analyze_video(vfr, tmp_path / "out", recognizer, RAW)
    times = [float(r["time_s"]) for r in read_rows(tmp_path / "out")]
    expected = np.cumsum([0, *deltas[:-1]]) / (delta * FPS)
    assert len(times) == 20 and times == pytest.approx(list(expected), abs=2e-3)
    assert max(np.diff(times)) > 2.5 * min(np.diff(times))  # really variable: 1/10 s and 1/30 s steps
    assert frame_count(result.annotated) == 20


def write_y4m_444(path: Path, frames: Sequence[np.ndarray], fps: int) -> Path:
    """An uncompressed 4:4:4 YUV4MPEG2 clip, which (unlike OpenCV's writers) keeps odd widths and heights."""
    height, width = frames[0].shape[:2]
    with open(path, "wb") as fh:
        fh.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C444\n".encode())
        for rgb in frames:
            ycrcb = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
            fh.write(b"FRAME\n" + ycrcb[:, :, 0].tobytes() + ycrcb[:, :, 2].tobytes() + ycrcb[:, :, 1].tobytes())
    return path


def test_odd_resolution(recognizer, faces, tmp_path: Path) -> None:
    frames = [face_scene(faces[0], size=(321, 241), face_px=120, centre=(160 + i, 120)) for i in range(8)]
    clip = write_y4m_444(tmp_path / "odd.y4m", frames, FPS)
    result = analyze_video(clip, tmp_path / "out", recognizer, RAW)
    rows = read_rows(tmp_path / "out")
    assert (result.info.width, result.info.height) == (321, 241)
    assert len(rows) == 8 and {r["face_id"] for r in rows} == {"1"}
    assert all(int(r["x"]) + int(r["w"]) <= 321 and int(r["y"]) + int(r["h"]) <= 241 for r in rows)
    assert frame_count(result.annotated) == 8


# ---------------------------------------------------------------- the CLI, and bad input


def cli(tmp_path: Path, clip: Path, checkpoint: Path, face_model: Path, *extra: str) -> int:
    return train_cli.main(
        [
            "video",
            str(clip),
            "--out",
            str(tmp_path / "out"),
            "--checkpoint",
            str(checkpoint),
            "--face-model",
            str(face_model),
            *extra,
        ]
    )


def test_cli_writes_the_four_files(
    faces, tmp_path: Path, tiny_cnn_checkpoint: Path, face_model_path: Path, capsys
) -> None:
    clip = write_clip(tmp_path / "clip.mp4", enter_leave_frames(faces), FPS)
    assert cli(tmp_path, clip, tiny_cnn_checkpoint, face_model_path, "--every", "2") == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUTS)
    assert "frames/s" in captured.out and "face 1:" in captured.out and "face 2:" in captured.out
    assert "frame/s" in captured.err  # tqdm's progress bar with its rate
    rows = read_rows(tmp_path / "out")
    assert {r["face_id"] for r in rows} == {"1", "2"} and all(int(r["frame"]) % 2 == 0 for r in rows)


def test_cli_help_explains_every_flag(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["video", "--help"])
    assert exc.value.code == 0 and "--every" in capsys.readouterr().out
    parser = train_cli.build_parser()
    for action in parser._subparsers._group_actions[0].choices["video"]._actions:
        assert action.help, f"flag {action.option_strings} has no help"


def assert_one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def zero_frame_mp4(path: Path) -> Path:
    cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (640, 480)).release()
    return path


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: p.write_text("these are notes, not a video\n" * 50), ("not a video",)),
        (lambda p: p.write_bytes(b""), ("empty", "0 bytes")),
        (zero_frame_mp4, ("cannot be decoded", "no frames")),
        (
            lambda p: (
                cv2.imwrite(str(p.with_suffix(".jpg")), np.zeros((64, 64, 3), np.uint8))
                and p.with_suffix(".jpg").rename(p)
            ),
            ("still JPEG image",),
        ),
    ],
    ids=["not-a-video", "zero-length", "zero-frames", "still-image"],
)
def test_cli_refuses_bad_files_with_one_line(
    make, words, tmp_path: Path, tiny_cnn_checkpoint: Path, face_model_path: Path, capsys
) -> None:
    clip = tmp_path / "clip.mp4"
    make(clip)
    assert cli(tmp_path, clip, tiny_cnn_checkpoint, face_model_path) == 2
    assert_one_line_error(capsys, *words)


def test_cli_refuses_a_missing_file_and_bad_flags(
    tmp_path: Path, tiny_cnn_checkpoint: Path, face_model_path: Path, faces, capsys
) -> None:
    assert cli(tmp_path, tmp_path / "absent.mp4", tiny_cnn_checkpoint, face_model_path) == 2
    assert_one_line_error(capsys, "does not exist")
    clip = one_face_clip(tmp_path / "one.mp4", faces[0], frames=2)
    assert cli(tmp_path, clip, tiny_cnn_checkpoint, face_model_path, "--every", "0") == 2
    assert_one_line_error(capsys, "--every")


def test_cli_truncated_mp4_is_named_as_damaged(
    faces, tmp_path: Path, tiny_cnn_checkpoint: Path, face_model_path: Path, capsys
) -> None:
    clip = one_face_clip(tmp_path / "full.mp4", faces[0], frames=20)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # the index (moov box) is at the end: lost
    assert cli(tmp_path, cut, tiny_cnn_checkpoint, face_model_path) == 2
    assert_one_line_error(capsys, "truncated")


def test_cli_truncated_avi_keeps_what_could_be_read(
    faces, tmp_path: Path, tiny_cnn_checkpoint: Path, face_model_path: Path, capsys
) -> None:
    clip = write_clip(tmp_path / "full.avi", (face_scene(faces[0], centre=(320 + i, 240)) for i in range(40)), FPS)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # AVI frames are readable up to the cut
    assert cli(tmp_path, cut, tiny_cnn_checkpoint, face_model_path) == 2
    line = assert_one_line_error(capsys, "truncated", "of the 40 frames")
    rows = read_rows(tmp_path / "out")
    assert 5 < len(rows) < 40 and f"only {len(rows)} of" in line


def test_cli_video_without_faces(tmp_path: Path, tiny_cnn_checkpoint: Path, face_model_path: Path, capsys) -> None:
    clip = write_clip(tmp_path / "empty_room.mp4", [np.full((480, 640, 3), 90 + i, np.uint8) for i in range(10)], FPS)
    assert cli(tmp_path, clip, tiny_cnn_checkpoint, face_model_path) == 2
    assert_one_line_error(capsys, "no face was found", "10 analyzed frames")
    assert (
        read_rows(tmp_path / "out") == [] and json.loads((tmp_path / "out" / "summary.json").read_text())["faces"] == []
    )


def test_package_raises_video_error_for_too_long_videos(recognizer, faces, tmp_path: Path) -> None:
    clip = one_face_clip(tmp_path / "one.mp4", faces[0], frames=30)  # 2 s
    with pytest.raises(VideoError, match="at most 1 s"):
        analyze_video(clip, tmp_path / "out", recognizer, VideoConfig(max_seconds=1))


def test_package_refuses_huge_frames_before_decoding(
    recognizer, faces, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emotion.video import reader as video_reader

    clip = one_face_clip(tmp_path / "one.mp4", faces[0], frames=2)
    monkeypatch.setattr(video_reader, "MAX_FRAME_PIXELS", 640 * 480 - 1)
    with pytest.raises(VideoError, match="640×480 frames.*scale it down"):
        VideoReader(clip)
