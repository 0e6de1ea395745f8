"""The app in a real browser: Chromium with a fake webcam playing real FER2013 faces, driven by Playwright.

Covers the Live tab (labels, bars and FPS update while streaming), the Upload tab and a 1-epoch CNN
training from the Training tab, and writes the README's screenshots to docs/screenshots/. Prints the
frame rate the browser actually gets. Uses assets/emotion_cnn.pt when it exists (sensible labels in
the screenshots), else the tiny untrained test model.
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_folder_dataset
from emotion.labels import CLASS_NAMES, display
from emotion.app import AppConfig, EmotionApp
from make_clip import face_scene, load_faces, make_clip
from test_app_client import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
SHIPPED = ROOT / "assets" / "emotion_cnn.pt"
DISPLAY_NAMES = [display(c) for c in CLASS_NAMES]
MEASURE_S = 10.0
READOUT = "#live-readout [data-testid=markdown]"  # the text only: the (hidden) status tracker has a timer in it


@pytest.fixture(scope="module")
def served(tiny_cnn_checkpoint: Path, face_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("browser")
    make_folder_dataset(base / "data" / "tiny-fer", per_class=6)
    config = AppConfig(checkpoint=SHIPPED if SHIPPED.is_file() else tiny_cnn_checkpoint, face_model=face_model_path,
                       device="cpu", data_root=base / "data", runs_dir=base / "runs", port=free_port())
    app = EmotionApp(config)
    _, url, _ = app.launch(prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        app.close()


@pytest.fixture(scope="module")
def page(served: str, tmp_path_factory: pytest.TempPathFactory):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed")
    if not (ROOT.parent / "shared" / "fer2013").is_dir():
        pytest.skip("../shared/fer2013 is not available for the fake webcam clip")
    clip = make_clip(tmp_path_factory.mktemp("clip") / "webcam.y4m", load_faces())
    args = ["--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={clip}", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.set_default_timeout(60_000)
        # "load", not "networkidle": Gradio keeps an event stream open, so the network is never idle.
        tab.goto(served, wait_until="load")
        tab.wait_for_selector("#live-camera")
        SHOTS.mkdir(parents=True, exist_ok=True)
        try:
            yield tab
        finally:
            browser.close()


def _fps(readout: str) -> float | None:
    m = re.search(r"([\d.]+) FPS", readout)
    return float(m.group(1)) if m else None


def test_live_tab_streams_labels_bars_and_fps(page) -> None:
    page.click("#live-camera >> text=Click to Access Webcam")
    page.click("#live-camera button.capture-button")  # "Record" starts the stream
    page.wait_for_function(f"() => /[0-9.]+ FPS/.test(document.querySelector('{READOUT}').innerText)")

    readouts, labels = [], set()
    start = time.time()
    while time.time() - start < MEASURE_S:
        text = page.inner_text(READOUT)
        if not readouts or text != readouts[-1]:
            readouts.append(text)
        labels.add(page.inner_text("#live-label"))
        page.wait_for_timeout(20)
    elapsed = time.time() - start
    fps_values = [f for f in map(_fps, readouts) if f is not None]
    print(f"\nbrowser live frame rate: {len(readouts) / elapsed:.1f} result updates/s over {elapsed:.0f}s; "
          f"app FPS readout median {np.median(fps_values):.1f} (min {min(fps_values):.1f}, max {max(fps_values):.1f})")

    assert len(readouts) >= 5  # results keep arriving, one per analyzed frame
    assert any("1 face" in r for r in readouts)
    assert fps_values and max(fps_values) > 0
    assert any(name in text for text in labels for name in DISPLAY_NAMES)  # bars name an emotion
    assert page.locator("#live-label .bar").count() or page.locator("#live-label dl, #live-label .confidence-set").count()
    page.screenshot(path=str(SHOTS / "live.png"))
    page.click("#live-camera >> text=Stop")


def test_upload_tab_shows_each_face(page, tmp_path: Path) -> None:
    faces = load_faces()
    photo = np.hstack([face_scene(faces[0], size=(420, 480)), face_scene(faces[1], size=(420, 480))])
    Image.fromarray(photo).save(tmp_path / "two_faces.jpg", quality=92)
    page.get_by_role("tab", name="Upload a photo").click()
    page.set_input_files("#upload-photo input[type=file]", str(tmp_path / "two_faces.jpg"))
    page.wait_for_function("() => /Found 2 faces/.test(document.querySelector('#upload-message').innerText)")
    page.wait_for_selector("#upload-annotated img")
    panels = page.locator(".face-label:visible")
    assert panels.count() == 2
    assert any(name in panels.first.inner_text() for name in DISPLAY_NAMES)
    page.screenshot(path=str(SHOTS / "upload.png"), full_page=True)


def test_training_tab_runs_one_epoch_and_draws_its_curves(page) -> None:
    page.get_by_role("tab", name="Training").click()
    page.wait_for_selector("#train-dataset")
    page.get_by_label("Epochs").fill("1")
    page.get_by_label("Batch size").fill("8")
    page.click("#train-start")
    page.wait_for_function("() => /Done|failed/.test(document.querySelector('#train-progress').innerText)", timeout=240_000)
    progress = page.inner_text("#train-progress")
    assert "Done" in progress, progress + "\n" + page.input_value("#train-log textarea")
    page.wait_for_selector("#train-curves img, #train-curves svg, #train-curves canvas")
    page.wait_for_selector("#train-use")
    page.wait_for_selector("#train-confusion img")
    assert "Validation accuracy" in page.inner_text("#train-summary")
    page.screenshot(path=str(SHOTS / "training.png"), full_page=True)
    page.click("#train-use")
    page.wait_for_function("() => document.querySelector('#model-info').innerText.includes('best.pt')")
