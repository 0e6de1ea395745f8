"""Grad-CAM saliency ("why this label"): heatmaps, their overlay, the Upload toggle and `predict --explain`."""

from __future__ import annotations

import json
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import api_client, trained_like_batchnorm
from PIL import Image

import train_cli
from emotion.app.model_panel import ModelManager
from emotion.app.upload import analyze_photo
from emotion.inference.classifier import EmotionClassifier
from emotion.inference.explain import (
    ExplainError,
    crop_to_frame,
    gradcam,
    overlay_heatmaps,
    prepare_out_dir,
)
from emotion.inference.faces import Box, crop_faces
from emotion.inference.recognizer import Recognizer
from emotion.models.checkpoint import LoadedModel
from emotion.models.networks import ModelConfig, build_model

ROOT = Path(__file__).resolve().parent.parent
TINY = ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1)


def _loaded(cfg: ModelConfig, tta: str = "none", seed: int = 0) -> LoadedModel:
    """A random-weight model as load_checkpoint would return it (eval mode), with trained-like BatchNorm statistics."""
    torch.manual_seed(seed)
    model, preprocess = build_model(cfg)
    trained_like_batchnorm(model)
    return LoadedModel(model.eval(), preprocess, cfg, "tiny.pt", {}, {}, {"tta": tta})


def _faces(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 48, 48), dtype=np.uint8)


@pytest.mark.parametrize(
    "cfg",
    [
        TINY,
        ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1, cnn_block="residual"),
        ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1, members=2, member_blocks=("plain", "residual")),
    ],
    ids=["plain", "residual", "mixed-ensemble"],
)
@pytest.mark.parametrize("tta", ["none", "flip", "shift"])
def test_heatmaps_have_the_face_shape_and_lie_in_0_1(cfg: ModelConfig, tta: str) -> None:
    loaded = _loaded(cfg, tta)
    with torch.inference_mode():  # as the app's classifier runs: gradients must still work
        heat = gradcam(loaded, _faces())
    assert heat.shape == (3, 48, 48) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    assert gradcam(loaded, np.zeros((0, 48, 48), np.uint8)).shape == (0, 48, 48)


def test_explaining_leaves_the_weights_and_their_gradients_alone() -> None:
    loaded = _loaded(
        ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1, members=2, member_blocks=("plain", "residual"))
    )
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    clf = EmotionClassifier(loaded, torch.device("cpu"), amp="off", tta="flip", engine="torch")
    gradcam(clf, _faces(), ["happy", "sad", 0])
    after = loaded.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert all(p.grad is None for p in loaded.model.parameters()) and not loaded.model.training


def _spotlight_model() -> LoadedModel:
    """One 1x1 conv stage that passes the (standardised) face through, and a head that reads 'angry' from its mean:
    the bright parts of a face are what make it angry, so they are what its saliency must show."""
    cfg = ModelConfig(kind="cnn", cnn_widths=(1,), cnn_convs=1, dropout=0.0)
    loaded = _loaded(cfg)
    net = loaded.model
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        conv, bn, linear = net.features[0], net.features[1], net.head[-1]
        conv.weight[0, 0, 1, 1] = 1.0
        bn.weight.fill_(1.0)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)  # BatchNorm passes its input through unchanged
        linear.weight[0, 0] = 1.0
    return loaded


@pytest.mark.parametrize("corner", [(0, 0), (28, 28)])
def test_saliency_follows_where_the_signal_is(corner: tuple[int, int]) -> None:
    face = np.full((1, 48, 48), 40, np.uint8)
    y, x = corner
    face[0, y : y + 20, x : x + 20] = 220
    heat = gradcam(_spotlight_model(), face, ["angry"])[0]
    inside = heat[y + 2 : y + 18, x + 2 : x + 18].mean()
    outside = heat[face[0] != 220].mean()
    assert inside > 0.9 and outside < 0.1


@pytest.fixture(scope="module")
def clip_loaded() -> LoadedModel:
    """A tiny random-weight CLIP ViT + adapter: no convolutional stage to explain."""
    cfg = ModelConfig(kind="clip", clip_model="emotion-tiny-vit")
    model, preprocess = build_model(cfg, clip_weights="random")
    return LoadedModel(model.eval(), preprocess, cfg, "clip.pt", {}, {}, {})


def test_a_clip_model_is_refused_with_a_clear_message(clip_loaded: LoadedModel) -> None:
    with pytest.raises(ExplainError, match="no convolutional stage"):
        gradcam(clip_loaded, _faces(1))


def test_bad_inputs_are_refused_with_a_message() -> None:
    loaded = _loaded(TINY)
    with pytest.raises(ValueError, match="48x48 uint8"):
        gradcam(loaded, np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="one class per face"):
        gradcam(loaded, _faces(2), ["happy"])
    with pytest.raises(ValueError, match="unknown class"):
        gradcam(loaded, _faces(1), ["bored"])
    with pytest.raises(ValueError, match="one 48x48 heatmap per box"):
        overlay_heatmaps(np.zeros((100, 100, 3), np.uint8), [Box(10, 10, 40, 40)], np.zeros((2, 48, 48)))


def test_crop_to_frame_maps_the_crop_back_where_crop_faces_cut_it() -> None:
    # A smooth pattern sampled through the matrix must reproduce the crop crop_faces cut (up to resampling).
    yy, xx = np.mgrid[0:300, 0:400]
    grey = (128 + 100 * np.sin(xx / 13.0) * np.cos(yy / 17.0)).astype(np.uint8)
    frame = np.repeat(grey[:, :, None], 3, axis=2)
    tilted = Box(150, 100, 96, 96, eyes=(175.0, 135.0, 218.0, 146.0))  # an eye-aligned crop, rotated about 14 degrees
    for box in (Box(150, 100, 96, 96), Box(0, 0, 80, 70), tilted):  # the second one's square reaches past the frame
        crop = crop_faces(frame, [box])[0].astype(np.float32)
        matrix = crop_to_frame(box, frame.shape)
        resampled = cv2.warpAffine(
            grey, matrix, (48, 48), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
        ).astype(np.float32)
        assert np.abs(resampled - crop).mean() < 4.0
        assert np.abs(np.roll(resampled, 4, axis=1) - crop).mean() > 10.0  # a 4-pixel shift would be caught
    whole = crop_to_frame(Box(0, 0, 400, 300), frame.shape, whole_image=True)
    assert (whole @ np.array([-0.5, -0.5, 1.0])).tolist() == pytest.approx([49.5, -0.5])
    assert (whole @ np.array([47.5, 47.5, 1.0])).tolist() == pytest.approx([349.5, 299.5])


def test_overlay_colours_only_the_crop_and_the_hot_spot_red() -> None:
    frame = np.full((240, 320, 3), 128, np.uint8)
    heat = np.zeros((1, 48, 48), np.float32)
    heat[0, :24, :24] = 1.0  # top-left quarter of the crop is hot
    out = overlay_heatmaps(frame, [Box(100, 80, 80, 80)], heat)
    matrix = crop_to_frame(Box(100, 80, 80, 80), frame.shape)
    hx, hy = (matrix @ np.array([12.0, 12.0, 1.0])).round().astype(int)
    cx, cy = (matrix @ np.array([36.0, 36.0, 1.0])).round().astype(int)
    assert out[hy, hx, 0] > out[hy, hx, 2] + 40  # red where hot
    assert out[cy, cx, 2] > out[cy, cx, 0] + 40  # blue where cold
    assert (out[:5] == 128).all() and (out[:, -5:] == 128).all()  # nothing outside the crop changes
    assert (frame == 128).all()  # the input is not drawn on


# --- the app and the command line -----------------------------------------------------------------------------------


def test_upload_with_explain_overlays_saliency_and_keeps_the_results(models: ModelManager, scene: np.ndarray) -> None:
    plain, message, faces = analyze_photo(models, scene)[:3]
    explained, message2, faces2 = analyze_photo(models, scene, explain=True)[:3]
    assert isinstance(explained, np.ndarray) and explained.shape == plain.shape and len(faces) == 1
    assert faces2 == faces and message2 == message
    assert (explained != plain).any()
    whole, _, faces3 = analyze_photo(models, scene, whole_image=True, explain=True)[:3]
    assert isinstance(whole, np.ndarray) and len(faces3) == 1


def test_upload_with_explain_on_a_clip_model_warns_instead_of_failing(
    models: ModelManager, scene: np.ndarray, clip_loaded: LoadedModel
) -> None:
    clf = EmotionClassifier(clip_loaded, torch.device("cpu"), amp="off", engine="torch")
    clip_models = types.SimpleNamespace(recognizer=Recognizer(clf, models.detector), detector=models.detector)
    annotated, message, faces = analyze_photo(clip_models, scene, explain=True)[:3]
    assert isinstance(annotated, np.ndarray) and len(faces) == 1
    assert "No explanation" in message and "convolutional" in message


def test_predict_explain_writes_one_png_per_image_and_keeps_the_json(
    tiny_cnn_checkpoint: Path,
    face_model_path: Path,
    scene: np.ndarray,
    tmp_path: Path,
    capsys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One engine for both runs: on a CPU with native bf16, "auto" times the engines and may pick another each time.
    monkeypatch.setattr("emotion.inference.classifier.amp_dtype", lambda *args, **kwargs: None)
    (tmp_path / "a").mkdir()
    images = [tmp_path / "a" / "face.jpg", tmp_path / "face.png", tmp_path / "broken.jpg"]
    Image.fromarray(scene).save(images[0])
    Image.fromarray(scene).save(images[1])
    images[2].write_bytes(b"not an image")
    args = [
        "predict",
        "--checkpoint",
        str(tiny_cnn_checkpoint),
        "--face-model",
        str(face_model_path),
        "--json",
        *map(str, images),
    ]
    assert train_cli.main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    out = tmp_path / "new" / "explained"
    assert train_cli.main([*args, "--explain", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == plain
    written = sorted(p.name for p in out.iterdir())
    assert written == ["face-2.png", "face.png"]  # the same name twice is numbered; the unreadable file is skipped
    picture = np.asarray(Image.open(out / "face.png"))
    assert picture.shape == scene.shape and (picture != scene).any()


def test_predict_explain_refuses_a_file_as_its_folder(tiny_cnn_checkpoint: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "taken.txt"
    target.write_text("x")
    code = train_cli.main(
        ["predict", "--checkpoint", str(tiny_cnn_checkpoint), "--whole-image", "--explain", str(target), str(target)]
    )
    assert code == 2 and "is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "x"
    with pytest.raises(ExplainError, match="cannot create"):
        prepare_out_dir(target / "below")


def test_predict_explain_whole_image(tiny_cnn_checkpoint: Path, real_faces, tmp_path: Path, capsys) -> None:
    face = tmp_path / "crop.png"
    Image.fromarray(real_faces["sad"][0]).save(face)
    assert (
        train_cli.main(
            [
                "predict",
                "--checkpoint",
                str(tiny_cnn_checkpoint),
                "--whole-image",
                "--explain",
                str(tmp_path / "out"),
                str(face),
            ]
        )
        == 0
    )
    assert np.asarray(Image.open(tmp_path / "out" / "crop.png")).shape == (48, 48, 3)


def test_bench_times_a_photo_without_and_with_gradcam(models: ModelManager, scene: np.ndarray) -> None:
    from emotion.bench.pipeline import explain_timings
    from emotion.bench.timing import BenchConfig

    r = explain_timings(models.recognizer, {1: scene}, BenchConfig(frames=1, warmup=0))["1_face"]
    assert r["faces_detected"] == 1 and r["plain_ms"]["median"] > 0 and r["explained_ms"]["median"] > 0
    assert isinstance(r["explain_ms_per_face"], float)


@pytest.mark.slow
def test_the_photo_api_takes_the_toggle_and_still_takes_the_old_two_inputs(
    tiny_cnn_checkpoint: Path, face_model_path: Path, scene: np.ndarray, tmp_path: Path
) -> None:
    from conftest import launched_app, served_config
    from gradio_client import handle_file

    photo = tmp_path / "face.jpg"
    Image.fromarray(scene).save(photo, quality=90)
    with launched_app(served_config(tmp_path, tiny_cnn_checkpoint, face_model_path)) as (_, url):
        client = api_client(url)
        plain = client.predict(handle_file(str(photo)), False, api_name="/analyze_photo")
        explained = client.predict(handle_file(str(photo)), False, True, api_name="/analyze_photo")
    assert len(plain[2]) == 1 and explained[2] == plain[2]
    a, b = (np.asarray(Image.open(r[0])) for r in (plain, explained))
    assert a.shape == b.shape and (a != b).any()
