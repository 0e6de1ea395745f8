"""Shared fixtures: synthetic FER-style datasets, tiny checkpoints and real faces from ../shared."""

from __future__ import annotations

import contextlib
import csv
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emotion.data.labels import CLASS_NAMES, FER_CSV_CODES

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FER_DIR = SHARED / "fer2013"
FACE_MODEL = SHARED / "models" / "face_detection_short_range.tflite"
# `train` flags of a CNN small enough to train an epoch on ``tiny_fer`` in about a second
TINY_CNN_FLAGS = ("--model", "cnn", "--epochs", "1", "--batch-size", "16", "--cnn-widths", "8,16", "--no-report")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: slower tests (browser, real data); still run by the README's test command"
    )


def synthetic_face(label: int, rng: np.random.Generator) -> np.ndarray:
    """A 48x48 image whose class is learnable: a bright band whose position encodes the label, plus noise."""
    img = rng.integers(0, 60, size=(48, 48)).astype(np.uint8)
    row = 3 + label * 6
    img[row : row + 5, 6:42] = 220
    return img


def make_folder_dataset(
    root: Path, per_class: int = 12, splits: tuple[str, ...] = ("train", "test"), seed: int = 0
) -> Path:
    """Write ``root/<split>/<class>/*.png`` with ``per_class`` synthetic faces per class; returns root."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for label, name in enumerate(CLASS_NAMES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(synthetic_face(label, rng)).save(d / f"{split}_{i}.png")
    return root


def make_csv_dataset(path: Path, per_class: int = 12, seed: int = 0) -> Path:
    """Write a fer2013.csv (emotion, pixels, Usage) with the original emotion codes; returns its path."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["emotion", "pixels", "Usage"])
        for usage in ("Training", "PublicTest", "PrivateTest"):
            for label, name in enumerate(CLASS_NAMES):
                for _ in range(per_class):
                    pixels = " ".join(map(str, synthetic_face(label, rng).flatten()))
                    w.writerow([FER_CSV_CODES.index(name), pixels, usage])
    return path


def train_tiny_cnn(data: Path, out: Path, *flags: str) -> int:
    """The exit code of ``train_cli.py train`` of a tiny CNN (``TINY_CNN_FLAGS``) on ``data`` into ``out``;
    ``flags`` come last, so they add to those and win over them (``--epochs 3``)."""
    import train_cli

    return train_cli.main(["train", "--data", str(data), "--out", str(out), *TINY_CNN_FLAGS, *flags])


@pytest.fixture
def tiny_fer(tmp_path: Path) -> Path:
    """A synthetic image-folder dataset with train/ and test/."""
    return make_folder_dataset(tmp_path / "fer")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Decoded-data caches go to the test's own folder, never the user's ~/.cache.
    monkeypatch.setenv("EMOTION_CACHE_DIR", str(tmp_path / "cache"))


def real_face_split(root: Path, split: str = "train", per_class: int = 2) -> Path:
    """A folder dataset at ``root`` whose ``split`` holds the first ``per_class`` real test faces of each class
    from ../shared (loads in milliseconds); skips the test when ../shared is absent. Returns ``root``."""
    if not FER_DIR.is_dir():
        pytest.skip("../shared/fer2013 is not available")
    for name in CLASS_NAMES:
        (root / split / name).mkdir(parents=True)
        for f in sorted((FER_DIR / "test" / name).glob("*.jpg"))[:per_class]:
            shutil.copy(f, root / split / name / f.name)
    return root


@pytest.fixture(scope="session")
def real_faces() -> dict[str, list[np.ndarray]]:
    """A few real 48x48 FER2013 test faces per class (skips when ../shared is absent)."""
    if not FER_DIR.is_dir():
        pytest.skip("../shared/fer2013 is not available")
    faces = {}
    for name in CLASS_NAMES:
        files = sorted((FER_DIR / "test" / name).glob("*.jpg"))[:4]
        faces[name] = [np.asarray(Image.open(f).convert("L")) for f in files]
    return faces


@pytest.fixture(scope="session")
def face_model_path() -> Path:
    """MediaPipe's BlazeFace model from ../shared (skips when absent)."""
    if not FACE_MODEL.is_file():
        pytest.skip("../shared/models/face_detection_short_range.tflite is not available")
    return FACE_MODEL


@pytest.fixture(scope="session")
def tiny_cnn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained, very small CNN checkpoint: loads through the real code path in milliseconds."""
    import torch

    from emotion.models.checkpoint import save_checkpoint
    from emotion.models.networks import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1)
    model, _ = build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_cnn.pt"
    save_checkpoint(path, model, cfg, metrics={"note": "untrained test model"})
    return path


def api_client(url: str, **kwargs):
    """A gradio_client ``Client`` for ``url`` whose ``predict`` tries once more, with a warning, when the server
    drops a result file's download midway.

    CI saw that once in about 40 runs (gradio 6.31, starlette 1.10, uvicorn 0.55: "peer closed connection without
    sending complete message body", 0 of a 5,600-byte result image); 1,800 requests here never did. A missing or
    broken result still fails the test: the second try raises too.
    """
    import warnings

    import httpx
    from gradio_client import Client

    class RetryingClient(Client):
        def predict(self, *args, **kw):
            try:
                return super().predict(*args, **kw)
            except httpx.RemoteProtocolError as exc:
                warnings.warn(f"retrying {kw.get('api_name')} once after a dropped download: {exc}", stacklevel=2)
                return super().predict(*args, **kw)

    return RetryingClient(url, verbose=False, **kwargs)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_config(base: Path, checkpoint: Path, face_model: Path, **overrides):
    """The ``AppConfig`` of a test app: CPU, a free port, and its dataset root, runs and assets folders under
    ``base`` so it touches nothing of the repository's; ``overrides`` set any other field."""
    from emotion.app import AppConfig

    folders = {"data_root": base / "data", "runs_dir": base / "runs", "assets_dir": base / "assets"}
    return AppConfig(
        checkpoint=checkpoint, face_model=face_model, device="cpu", port=free_port(), **{**folders, **overrides}
    )


@contextlib.contextmanager
def launched_app(config) -> Iterator[tuple]:
    """(app, url): the app for an ``AppConfig`` served on localhost for a test, and closed afterwards."""
    from emotion.app import EmotionApp

    app = EmotionApp(config)
    _, url, _ = app.launch(prevent_thread_lock=True, quiet=True)
    try:
        yield app, url
    finally:
        app.close()


@pytest.fixture(scope="module")
def models(tiny_cnn_checkpoint: Path, face_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """The app's ModelManager on the tiny CNN and BlazeFace, with empty assets/ and runs/ folders (one per module)."""
    from emotion.app.model_panel import ModelManager

    base = tmp_path_factory.mktemp("app")
    return ModelManager(tiny_cnn_checkpoint, face_model_path, "cpu", base / "assets", base / "runs", ROOT)


@pytest.fixture(scope="module")
def scene(real_faces: dict[str, list[np.ndarray]]) -> np.ndarray:
    """A 640x480 frame with one real face, as a webcam would see it."""
    from make_clip import face_scene

    return face_scene(real_faces["happy"][0])


def trained_like_batchnorm(model):
    """``model`` with random BatchNorm running statistics, as a trained network has (networks then differ beyond
    their weights, and eval mode is not an identity); returns it."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model
