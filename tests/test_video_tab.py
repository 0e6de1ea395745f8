"""The Video tab served for real and called through gradio_client: results, bad input, cleanup, cancelling.

Each test checks what the server keeps afterwards: its work folders and uploads must be gone (on the
output TTL after results, at once after a failure or a Cancel).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import api_client, launched_app, served_config
from make_clip import face_scene
from test_video import FPS, clip_faces, enter_leave_frames, frame_count, one_face_clip, read_rows

from emotion.video.analysis import write_clip


@pytest.fixture(scope="module")
def faces() -> list[np.ndarray]:
    return clip_faces()


@pytest.fixture(scope="module")
def served(tiny_cnn_checkpoint: Path, face_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("served")
    config = served_config(base, tiny_cnn_checkpoint, face_model_path, training=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(base / "gradio"))  # a cache of its own: what is left in it is this app's
        with launched_app(config) as (app, url):
            yield app, url


@pytest.fixture(scope="module")
def client(served, tmp_path_factory: pytest.TempPathFactory):
    # Downloads go to a folder of the test's own, so the server's cache holds only what the server keeps.
    return api_client(served[1], download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def cache_root(served) -> Path:
    """Gradio's cache folder, where uploads land and where the Video tab works."""
    app, _ = served
    return Path(
        next(b for b in app.demo.blocks.values() if getattr(b, "elem_id", None) == "video-annotated").GRADIO_CACHE
    )


def server_leftovers(cache_root: Path, upload_name: str) -> list[Path]:
    """The tab's work folders and any copy of the uploaded file still in the server's cache."""
    from emotion.app.video_tab import WORK_PREFIX

    return [*cache_root.glob(f"{WORK_PREFIX}*"), *cache_root.rglob(upload_name)]


def wait_until(condition, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_video_tab_gives_video_timeline_and_csv_then_deletes_them(
    client, cache_root: Path, faces, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradio_client import handle_file

    from emotion.app import video_tab

    monkeypatch.setattr(video_tab, "OUTPUT_TTL_S", 3.0)
    clip = write_clip(tmp_path / f"tab-{tmp_path.name}.mp4", enter_leave_frames(faces), FPS)
    video, timeline, files, message = client.predict(handle_file(str(clip)), 1, api_name="/analyze_video")
    assert Path(video).suffix == ".webm" and frame_count(Path(video)) == 45
    assert Path(timeline).stat().st_size > 10_000
    assert sorted(Path(f).name for f in files) == ["annotated.webm", "faces.csv", "summary.json", "timeline.png"]
    rows = read_rows(Path(next(f for f in files if f.endswith("faces.csv"))).parent)
    assert len(rows) == 60 and {r["face_id"] for r in rows} == {"1", "2"}
    assert "Analyzed 45 of 45 frames" in message and "Face 1" in message and "Face 2" in message
    assert server_leftovers(cache_root, clip.name)  # served for a while ...
    assert wait_until(lambda: not server_leftovers(cache_root, clip.name)), server_leftovers(
        cache_root, clip.name
    )  # ... then gone


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p, faces: p.write_text("not a video\n" * 40), "is not a video"),
        (lambda p, faces: p.write_bytes(b""), "is empty"),
        (
            lambda p, faces: write_clip(p, [np.full((120, 160, 3), 90 + i, np.uint8) for i in range(5)], FPS),
            "No face was found",
        ),
        (lambda p, faces: one_face_clip(p, faces[0], frames=30), "at most 1 s"),
    ],
    ids=["not-a-video", "zero-length", "no-faces", "too-long"],
)
def test_video_tab_warns_about_bad_input(
    make, words, client, cache_root: Path, faces, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradio_client import handle_file

    from emotion.app import video_tab

    monkeypatch.setattr(video_tab, "MAX_VIDEO_SECONDS", 1)
    clip = tmp_path / f"bad-{tmp_path.name}.mp4"
    make(clip, faces)
    video, timeline, files, message = client.predict(handle_file(str(clip)), 1, api_name="/analyze_video")
    assert video is None and timeline is None and not files
    assert message.startswith("⚠️") and words in message
    # Nothing kept, not even the upload (the handler cleans up just after its last update is sent).
    assert wait_until(lambda: not server_leftovers(cache_root, clip.name), 5), server_leftovers(cache_root, clip.name)


def test_video_tab_never_reads_or_deletes_files_outside_its_uploads(served, faces, tmp_path: Path) -> None:
    import httpx

    outside = one_face_clip(tmp_path / "server_file.mp4", faces[0], frames=3)  # a file on the server, not an upload
    # A raw request naming the file (gradio_client would upload it first, which is harmless).
    base = served[1].rstrip("/") + "/gradio_api/call/analyze_video"
    event = httpx.post(base, json={"data": [{"path": str(outside), "meta": {"_type": "gradio.FileData"}}, 1]}).json()
    answer = httpx.get(f"{base}/{event['event_id']}", timeout=60).text
    assert "annotated" not in answer and "Analyzed" not in answer, answer
    assert outside.is_file()


def test_video_tab_can_be_cancelled_and_cleans_up(client, cache_root: Path, faces, tmp_path: Path) -> None:
    from gradio_client import handle_file

    clip = write_clip(
        tmp_path / f"long-{tmp_path.name}.mp4",
        (face_scene(faces[i // 100 % 4], centre=(320 + i % 20, 240)) for i in range(800)),
        30,
    )
    earlier = set(server_leftovers(cache_root, clip.name))  # results of earlier tests, still being served
    job = client.submit(handle_file(str(clip)), 1, api_name="/analyze_video")
    assert wait_until(
        lambda: any(p.parent not in earlier for p in cache_root.glob("emotion-video-*/faces.csv")), 30
    )  # running
    time.sleep(1.0)
    job.cancel()
    left = lambda: [p for p in server_leftovers(cache_root, clip.name) if p not in earlier]  # noqa: E731
    assert wait_until(lambda: not left(), 20), left()
    assert wait_until(job.done, 10)
    assert not any("Analyzed" in str(out) for out in job.outputs())  # it stopped before finishing
