"""pyproject.toml installs the package with its console scripts: `emotion` (the CLI) and `emotion-app` (the app)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emotion.data.labels import CLASS_NAMES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a fresh virtual environment with `pip install -e .` done (dependencies from this one)."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    # This interpreter's pip installs into the venv; --no-deps and --no-build-isolation keep it offline.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-e",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0 and "no such option: --python" in done.stderr:
        pytest.skip("this pip cannot install into another interpreter (pip >= 22.3 can)")
    assert done.returncode == 0, done.stderr[-2000:]
    return env_dir / "bin"


def _run(command: list[str], **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=kw.pop("cwd", "/"), **kw)


def test_console_scripts_print_their_help(installed: Path) -> None:
    cli = _run([str(installed / "emotion"), "--help"])
    assert cli.returncode == 0 and "predict" in cli.stdout and "train" in cli.stdout
    app = _run([str(installed / "emotion-app"), "--help"])
    assert app.returncode == 0 and "--port" in app.stdout


def test_emotion_predict_runs_the_shipped_model(installed: Path, tmp_path: Path, real_faces) -> None:
    face = tmp_path / "face.png"
    Image.fromarray(np.kron(real_faces["happy"][0], np.ones((4, 4), np.uint8))).save(face)
    done = _run([str(installed / "emotion"), "predict", str(face), "--json", "--whole-image"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result[0]["image"].endswith("face.png") and result[0]["faces"][0]["label"] in CLASS_NAMES, result
