"""Hostile inputs (issue 9), the app's side: server files leaking through the API, photos kept on disk,
concurrent identical uploads, bad webcam frames, and 16-bit and huge images. Training's side (CSV rows,
hyperparameters, runs, checkpoints, faults while training) is in test_security_training.py.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ROOT, launched_app, served_config
from gradio.utils import get_upload_folder
from make_clip import face_scene
from PIL import Image

import train_cli
from emotion.app import AppConfig
from emotion.app.inputs import PhotoError, client_image
from emotion.app.model_panel import ModelManager
from emotion.data.splits import load_split
from emotion.inference.recognizer import ImageTooLargeError, read_rgb

SWEEP_AGE_S = 8  # the test app deletes uploads and results older than this


def huge_png(path: Path, side: int = 13000) -> Path:
    """A black ``side`` x ``side`` grayscale PNG of a few hundred KB, written without holding its pixels in memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )
    return path


# --- the app, served: only uploaded files are opened, nothing is kept, concurrent requests do not collide -----------


@pytest.fixture(scope="module")
def gradio_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private Gradio temp folder for this module's app, so its files can be counted."""
    folder = tmp_path_factory.mktemp("gradio-tmp")
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = previous


@pytest.fixture(scope="module")
def served(
    gradio_tmp: Path, tiny_cnn_checkpoint: Path, face_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    base = tmp_path_factory.mktemp("served")
    # A faster sweep so the deletion test takes seconds (the shipped defaults are checked separately), yet long
    # enough that queued concurrent requests still find their uploads on a busy machine.
    config = served_config(
        base,
        tiny_cnn_checkpoint,
        face_model_path,
        training=False,
        cache_sweep_s=1,
        cache_max_age_s=SWEEP_AGE_S,
    )
    with launched_app(config) as (app, url):
        yield url


@pytest.fixture(scope="module")
def client(served: str):
    from gradio_client import Client

    return Client(served, verbose=False, download_files=False)  # results stay on the server: nothing is copied here


@pytest.fixture(scope="module")
def face_photo(real_faces: dict[str, list[np.ndarray]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "face.jpg"
    Image.fromarray(face_scene(real_faces["happy"][0])).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image file on the server that no client uploaded."""
    path = tmp_path_factory.mktemp("private") / "secret.png"
    Image.fromarray(np.full((60, 80, 3), (200, 10, 10), np.uint8)).save(path)
    return path


def _raw_call(url: str, endpoint: str, data: list) -> tuple[str, object]:
    """POST /gradio_api/call/<endpoint> as any HTTP client could, then read its result: (event, data)."""
    with httpx.Client(base_url=url, timeout=60) as http:
        event_id = http.post(f"/gradio_api/call/{endpoint}", json={"data": data}).json()["event_id"]
        lines = http.get(f"/gradio_api/call/{endpoint}/{event_id}").text.strip().splitlines()
    event = next(line.split(": ", 1)[1] for line in reversed(lines) if line.startswith("event: "))
    payload = next(line.split(": ", 1)[1] for line in reversed(lines) if line.startswith("data: "))
    return event, json.loads(payload)


@pytest.mark.parametrize("endpoint", ["analyze_photo", "analyze_frame"])
@pytest.mark.parametrize("form", ["unmarked-dict", "bare-string", "marked-outside-cache"])
def test_server_files_are_never_opened_for_a_request(served: str, secret: Path, endpoint: str, form: str) -> None:
    value = {
        "unmarked-dict": {"path": str(secret)},
        "bare-string": str(secret),
        "marked-outside-cache": {"path": str(secret), "meta": {"_type": "gradio.FileData"}},
    }[form]
    data = [value, False, False] if endpoint == "analyze_photo" else [value]  # photo, whole image, explain
    event, result = _raw_call(served, endpoint, data)
    if event == "complete":  # our handler answered: no image, and a message saying why
        assert result[0] is None
        message = result[1] if endpoint == "analyze_photo" else result[2]
        assert "Only images uploaded to this app" in message
    else:  # Gradio itself refused it before any handler ran: not a file object, or a marked path outside its cache
        assert form in ("bare-string", "marked-outside-cache") and event == "error"
    assert str(secret) not in json.dumps(result)


def test_client_image_accepts_only_uploads_and_image_data(gradio_tmp: Path, secret: Path) -> None:
    upload = gradio_tmp / "abc123" / "face.png"
    upload.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(upload)
    marked = {"path": str(upload), "meta": {"_type": "gradio.FileData"}}
    assert client_image(marked, 1920)[1] == (20, 10)
    escape = {
        "path": str(upload.parent / ".." / ".." / secret.parent.name / "secret.png"),
        "meta": {"_type": "gradio.FileData"},
    }
    for bad in (
        {"path": str(upload)},
        str(upload),
        escape,
        {"path": str(secret), "meta": {"_type": "gradio.FileData"}},
        42,
    ):
        with pytest.raises(PhotoError, match="Only images uploaded"):
            client_image(bad, 1920)
    inline = {"url": "data:image/png;base64," + base64.b64encode(upload.read_bytes()).decode(), "path": None}
    assert client_image(inline, 1920)[0].shape == (10, 20, 3)
    with pytest.raises(PhotoError):
        client_image({"url": "data:image/png;base64,not-base64!", "path": None}, 1920)


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_uploads_and_results_are_deleted_soon_after_the_response(client, gradio_tmp: Path, face_photo: Path) -> None:
    from gradio_client import handle_file

    before = set(_files(gradio_tmp))
    for _ in range(3):
        annotated, message, faces, *_ = client.predict(handle_file(str(face_photo)), False, api_name="/analyze_photo")
        assert message.startswith("Found 1 face") and Path(annotated["path"]).is_file()
    created = set(_files(gradio_tmp)) - before
    assert created, "uploads and results should be on disk right after the responses"
    deadline = time.time() + SWEEP_AGE_S + 15  # max age + 1 s sweep here; the shipped 30 s + 10 s stays within 60 s
    while time.time() < deadline and any(p.exists() for p in created):
        time.sleep(0.5)
    assert not [p for p in created if p.exists()], "uploads or results outlived the sweep"
    defaults = AppConfig()
    assert defaults.cache_max_age_s + defaults.cache_sweep_s < 60


def test_concurrent_identical_uploads_all_succeed_with_their_own_result(client, served: str, face_photo: Path) -> None:
    from gradio_client import handle_file

    def one(_: int) -> tuple[str, bytes]:
        annotated, message, *_ = client.predict(handle_file(str(face_photo)), False, api_name="/analyze_photo")
        assert message.startswith("Found 1 face")
        body = httpx.get(annotated["url"], timeout=30)
        body.raise_for_status()
        return annotated["path"], body.content

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    paths = [p for p, _ in results]
    assert len(set(paths)) == len(paths), "identical requests must not share a result file"
    assert len({body for _, body in results}) == 1  # and yet the same, complete image each time


def test_a_bad_frame_gets_a_message_not_an_upstream_error(client, tmp_path: Path) -> None:
    from gradio_client import handle_file

    bad = tmp_path / "frame.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    annotated, label, readout, faces = client.predict(handle_file(str(bad)), api_name="/analyze_frame")
    assert annotated is None and faces == [] and "could not be read as an image" in readout


# --- images: bit depths and sizes -----------------------------------------------------------------------------------


def test_16_bit_and_float_images_are_scaled_not_saturated(tmp_path: Path) -> None:
    ramp8 = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    Image.fromarray(ramp8.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    Image.fromarray(ramp8.astype(np.float32) / 255.0).save(tmp_path / "float.tif")
    for name in ("gray16.png", "float.tif"):
        rgb = read_rgb(tmp_path / name)
        assert rgb.dtype == np.uint8 and rgb.shape == (8, 256, 3)
        assert np.abs(rgb[:, :, 0].astype(int) - ramp8).max() <= 1, f"{name} was not scaled to 8 bits"


def test_training_folders_scale_16_bit_faces_and_skip_huge_files(tmp_path: Path) -> None:
    from conftest import make_folder_dataset

    root = make_folder_dataset(tmp_path / "fer", per_class=1, splits=("train",))
    face8 = np.asarray(Image.open(next((root / "train" / "happy").glob("*.png"))))
    Image.fromarray(face8.astype(np.uint16) * 257).save(root / "train" / "happy" / "face16.png")
    huge_png(root / "train" / "sad" / "huge.png")
    ds = load_split(root, "train", tmp_path / "cache")
    assert len(ds) == 8 and ds.skipped == 1
    happy = ds.images[ds.labels == 3]
    assert any(np.array_equal(img.numpy(), face8) for img in happy) and all(
        np.abs(img.numpy().astype(int) - face8).max() <= 1 for img in happy
    )


def test_a_16_bit_face_gets_the_same_label_as_its_8_bit_original(
    tmp_path: Path, real_faces, tiny_cnn_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    face = real_faces["happy"][0]
    Image.fromarray(face).save(tmp_path / "face8.png")
    Image.fromarray(face.astype(np.uint16) * 257).save(tmp_path / "face16.png")
    assert (
        train_cli.main(
            [
                "predict",
                str(tmp_path / "face8.png"),
                str(tmp_path / "face16.png"),
                "--whole-image",
                "--checkpoint",
                str(tiny_cnn_checkpoint),
                "--json",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    p8, p16 = (np.array(list(d["faces"][0]["probabilities"].values())) for d in doc)
    assert np.abs(p8 - p16).max() < 1e-3


def test_a_huge_png_is_refused_before_decoding(
    tmp_path: Path, tiny_cnn_checkpoint: Path, face_model_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = huge_png(tmp_path / "huge.png")
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageTooLargeError, match="13000x13000"):
        read_rgb(path)
    # The photo handler, the frame handler and the CLI all say so instead of decoding 169 megapixels.
    models = ModelManager(tiny_cnn_checkpoint, face_model_path, "cpu", tmp_path, tmp_path, ROOT)
    from emotion.app.live import analyze_client_frame
    from emotion.app.upload import analyze_photo

    with pytest.warns(UserWarning, match="too many pixels"):
        assert analyze_photo(models, str(path))[0] is None
    upload_dir = Path(get_upload_folder()) / "test-huge"
    upload_dir.mkdir(parents=True, exist_ok=True)
    upload = upload_dir / "huge.png"
    upload.write_bytes(path.read_bytes())
    try:
        frame = analyze_client_frame(models, {"path": str(upload), "meta": {"_type": "gradio.FileData"}}, None)
        assert frame[0] is None and "too many pixels" in frame[2]
    finally:
        upload.unlink()
    assert (
        train_cli.main(["predict", str(path), "--whole-image", "--checkpoint", str(tiny_cnn_checkpoint), "--json"]) == 0
    )
    assert "13000x13000" in json.loads(capsys.readouterr().out)[0]["error"]


def test_predicting_a_huge_png_stays_under_1_gb(tmp_path: Path, tiny_cnn_checkpoint: Path) -> None:
    path = huge_png(tmp_path / "huge.png")
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report pytest's own peak.
    code = (
        "import re, sys, train_cli; code = train_cli.main(sys.argv[1:]); status = open('/proc/self/status').read(); "
        "print('PEAK_MB', int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1)) / 1024); sys.exit(code)"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "predict",
            str(path),
            "--whole-image",
            "--json",
            "--checkpoint",
            str(tiny_cnn_checkpoint),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    peak = float(result.stdout.split("PEAK_MB")[1])
    print(f"peak memory predicting a 13000x13000 PNG: {peak:.0f} MB")
    assert peak < 1024
    assert "pixels" in json.loads(result.stdout.split("PEAK_MB")[0])[0]["error"]


def test_a_huge_jpeg_is_decoded_at_reduced_scale(tmp_path: Path) -> None:
    Image.new("L", (9000, 9000), 128).save(tmp_path / "huge.jpg", quality=50)
    rgb = read_rgb(tmp_path / "huge.jpg")  # 81 megapixels: decoded at half scale, under the limit
    assert rgb.shape == (4500, 4500, 3) and int(rgb.mean()) in range(120, 136)
    assert read_rgb(tmp_path / "huge.jpg", max_side=1000).shape == (1000, 1000, 3)


# --- data -----------------------------------------------------------------------------------------------------------
