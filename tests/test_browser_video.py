"""The Video tab in a real browser: upload a clip of real FER2013 faces, get the annotated video, the timeline
and the downloads; a file that is not a video gives a warning. Writes docs/screenshots/video.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import launched_app, served_config
from make_clip import face_scene, load_faces
from test_browser import CHROMIUM, ROOT, SHIPPED, SHOTS

from emotion.video.analysis import write_clip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tiny_cnn_checkpoint: Path, face_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("browser-video")
    checkpoint = SHIPPED if SHIPPED.is_file() else tiny_cnn_checkpoint
    config = served_config(base, checkpoint, face_model_path, training=False, assets_dir=ROOT / "assets")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(base / "gradio"))
        with launched_app(config) as (app, url):
            yield url


@pytest.fixture(scope="module")
def page(served: str):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed")
    if not (ROOT.parent / "shared" / "fer2013").is_dir():
        pytest.skip("../shared/fer2013 is not available for the clip")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1280, "height": 1100})
        tab.set_default_timeout(60_000)
        tab.goto(served, wait_until="load")  # not "networkidle": Gradio keeps an event stream open
        tab.get_by_role("tab", name="Video").click()
        tab.wait_for_selector("#video-input")
        try:
            yield tab
        finally:
            browser.close()


def test_video_tab_analyzes_a_clip(page, tmp_path: Path) -> None:
    faces = load_faces()
    # Two people one after the other, two seconds each, on the left then on the right, at 15 fps.
    frames = [face_scene(faces[i // 30], centre=(200 + 240 * (i // 30) + i % 30, 240)) for i in range(60)]
    clip = write_clip(tmp_path / "two_people.mp4", frames, 15)
    page.set_input_files("#video-input input[type=file]", str(clip))
    page.click("#video-run")
    page.wait_for_function("() => /Analyzed 60 of 60 frames/.test(document.querySelector('#video-message').innerText)")
    message = page.inner_text("#video-message")
    assert "Face 1" in message and "Face 2" in message
    assert page.locator("#video-annotated video").get_attribute("src")
    page.wait_for_selector("#video-timeline img")
    downloads = page.inner_text("#video-files").replace("\n", "")  # names are split into stem and suffix
    for name in ("annotated.webm", "faces.csv", "timeline.png", "summary.json"):
        assert name in downloads
    # The annotated video plays in the browser (VP8 WebM): it has a duration once its metadata loaded.
    duration = page.wait_for_function(
        "() => { const v = document.querySelector('#video-annotated video');"
        " return v && v.readyState >= 1 && v.duration; }"
    ).json_value()
    assert duration == pytest.approx(4.0, abs=0.5)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "video.png"), full_page=True)


def test_video_tab_warns_about_a_file_that_is_not_a_video(page, tmp_path: Path) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n" * 50)
    page.reload(wait_until="load")  # an empty upload field again
    page.get_by_role("tab", name="Video").click()
    page.set_input_files("#video-input input[type=file]", str(bad))
    page.click("#video-run")
    page.wait_for_function("() => /not a video/.test(document.querySelector('#video-message').innerText)")
    assert any("not a video" in toast for toast in page.locator(".toast-body").all_inner_texts())


def test_video_tab_can_be_cancelled(page, tmp_path: Path) -> None:
    faces = load_faces()
    clip = write_clip(
        tmp_path / "long.mp4", (face_scene(faces[i // 150 % 4], centre=(320 + i % 20, 240)) for i in range(900)), 30
    )
    page.reload(wait_until="load")
    page.get_by_role("tab", name="Video").click()
    page.set_input_files("#video-input input[type=file]", str(clip))
    page.click("#video-run")
    page.wait_for_function("() => /Analyzing: frame/.test(document.querySelector('#video-message').innerText)")
    page.click("#video-cancel")
    page.wait_for_function("() => /Cancelled/.test(document.querySelector('#video-message').innerText)")
    page.wait_for_timeout(1500)  # a late progress update must not overwrite it: the run has stopped
    assert "Cancelled" in page.inner_text("#video-message")
    assert not page.locator("#video-annotated video").count()
