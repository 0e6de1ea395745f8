"""The app served for real and called the way a program would: gradio_client against its API endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import api_client, launched_app, served_config
from make_clip import face_scene
from PIL import Image

from app import build_parser, main
from emotion.app import AppConfig, EmotionApp
from emotion.data.labels import CLASS_NAMES


@pytest.fixture(scope="module")
def served(
    tiny_cnn_checkpoint: Path, face_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EmotionApp, str]]:
    base = tmp_path_factory.mktemp("served")
    with launched_app(served_config(base, tiny_cnn_checkpoint, face_model_path)) as (app, url):
        yield app, url


@pytest.fixture(scope="module")
def client(served: tuple[EmotionApp, str]):
    return api_client(served[1])


@pytest.fixture(scope="module")
def face_photo(real_faces: dict[str, list[np.ndarray]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "face.jpg"
    Image.fromarray(face_scene(real_faces["happy"][0])).save(path, quality=90)
    return path


def test_serves_on_localhost_with_an_upload_limit(served: tuple[EmotionApp, str]) -> None:
    app, url = served
    assert url.startswith("http://127.0.0.1:")
    assert app.demo.share is False and app.demo.max_file_size == 20 * 1024 * 1024


def test_api_offers_photo_and_frame_endpoints_only(client) -> None:
    endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/analyze_photo", "/analyze_frame", "/switch_model"} <= endpoints
    assert not any("train" in e for e in endpoints)  # training is driven from the UI only


def test_analyze_photo_finds_one_face(client, face_photo: Path) -> None:
    from gradio_client import handle_file

    annotated, message, faces, first, *others = client.predict(
        handle_file(str(face_photo)), False, api_name="/analyze_photo"
    )
    assert Path(annotated).is_file() and message.startswith("Found 1 face")
    assert len(faces) == 1
    face = faces[0]
    assert face["label"] in CLASS_NAMES and 0.0 <= face["score"] <= 1.0
    assert set(face["probabilities"]) == set(CLASS_NAMES) and sum(face["probabilities"].values()) == pytest.approx(
        1.0, abs=1e-3
    )
    x, y, w, h = face["box"]
    assert 170 < x + w / 2 < 470 and 90 < y + h / 2 < 390 and 100 < w < 300  # the 200 px face pasted at the centre
    assert first["visible"] and len(first["value"]["confidences"]) == len(CLASS_NAMES)
    assert not any(panel["visible"] for panel in others)


def test_analyze_photo_reports_a_corrupt_upload(client, tmp_path: Path) -> None:
    from gradio_client import handle_file

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    annotated, message, faces, *_ = client.predict(handle_file(str(bad)), False, api_name="/analyze_photo")
    assert annotated is None and faces == [] and "could not be read as an image" in message


def test_analyze_frame_endpoint_smooths_per_client(client, face_photo: Path) -> None:
    from gradio_client import handle_file

    for _ in range(2):
        annotated, label, readout, faces = client.predict(handle_file(str(face_photo)), api_name="/analyze_frame")
    assert Path(annotated).is_file() and len(faces) == 1
    assert label["label"] and "1 face" in readout


def test_parser_defaults_are_safe_and_every_flag_is_explained() -> None:
    parser = build_parser()
    a = parser.parse_args([])
    assert a.host == "127.0.0.1" and a.port == 7860 and not a.share and not a.no_training
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"


def test_missing_files_on_the_command_line_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for flag in ("--checkpoint", "--face-model"):
        with pytest.raises(SystemExit) as exc:
            main([flag, str(tmp_path / "absent")])
        assert exc.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_no_training_hides_the_training_tab(tiny_cnn_checkpoint: Path, face_model_path: Path) -> None:
    app = EmotionApp(
        AppConfig(checkpoint=tiny_cnn_checkpoint, face_model=face_model_path, device="cpu", training=False)
    )
    tabs = [c["props"].get("label") for c in app.demo.config["components"] if c["type"] == "tabitem"]
    assert app.runner is None and tabs == ["Live", "Upload a photo", "Video"]
