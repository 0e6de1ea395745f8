"""Where the BlazeFace face-detector model file comes from: an explicit path, the cache, or a checked download.

The search order: an explicit path (``--face-model``) or ``$EMOTION_FACE_MODEL``, a copy in the cache dir
(``$EMOTION_CACHE_DIR`` or ``~/.cache/emotion``), a one-time download from Google with a sha256 check, and
otherwise none, which ``emotion.inference.faces.FaceDetector`` answers with OpenCV's Haar cascade. Only the
file is resolved here; loading and running it is the detector's job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

ENV_FACE_MODEL = "EMOTION_FACE_MODEL"
FACE_MODEL_FILENAME = "face_detection_short_range.tflite"
FACE_MODEL_URL = (
    "https://storage.googleapis.com/mediapipe-models/face_detector/blaze_face_short_range/"
    "float16/latest/blaze_face_short_range.tflite"
)
# Google-pinned digests of BlazeFace short-range (mediapipe's third_party/external_files.bzl): the plain model
# (also shipped in the mediapipe 0.10.x wheels and in ../shared) and the variant with TFLite metadata.
# A download matching neither is rejected.
KNOWN_FACE_MODEL_SHA256 = frozenset(
    {
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",  # face_detection_short_range.tflite
        "42012b078cc201e994674ac863862577279644f3ba405729ccd964f03e9f12d5",  # face_detection_short_range_with_metadata.tflite
    }
)
DOWNLOAD_TIMEOUT_S = 10.0
MAX_DOWNLOAD_BYTES = 10 * 2**20  # the model is 230 KB; anything far bigger is not it
_urlopen = urllib.request.urlopen  # module attribute so tests can stand in for the network


def cache_dir() -> Path:
    """Where downloaded models live: ``$EMOTION_CACHE_DIR`` or ``~/.cache/emotion``."""
    root = os.environ.get("EMOTION_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "emotion")
    return Path(root).expanduser()


def download_face_model(dest: Path, url: str = FACE_MODEL_URL, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download the BlazeFace model to ``dest`` atomically; raises OSError or ValueError (unknown sha256)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, _urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 16):
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise ValueError(f"{url} is larger than {MAX_DOWNLOAD_BYTES} bytes: not the BlazeFace model")
                digest.update(chunk)
                out.write(chunk)
        sha = digest.hexdigest()
        if sha not in KNOWN_FACE_MODEL_SHA256:
            raise ValueError(f"{url} has sha256 {sha}, which is not a known BlazeFace short-range model; rejected")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _resolve(path: str | os.PathLike | None, allow_download: bool) -> tuple[str | None, str, bool]:
    """(model path or None, description, whether the user named it explicitly)."""
    for given, how in ((path, "--face-model"), (os.environ.get(ENV_FACE_MODEL), f"${ENV_FACE_MODEL}")):
        if given:
            p = Path(given).expanduser()
            if not p.is_file():
                raise FileNotFoundError(
                    f"face model {p} (from {how}) does not exist; point it at "
                    f"{FACE_MODEL_FILENAME} or unset it to use the cached/downloaded model"
                )
            return str(p), f"MediaPipe BlazeFace ({p}, from {how})", True
    cached = cache_dir() / FACE_MODEL_FILENAME
    if cached.is_file() and cached.stat().st_size > 0:
        return str(cached), f"MediaPipe BlazeFace ({cached}, cached)", False
    why = "no MediaPipe model found"
    if allow_download:
        try:
            download_face_model(cached)
            return str(cached), f"MediaPipe BlazeFace ({cached}, downloaded)", False
        except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
            log.warning("could not download the BlazeFace face model from %s (%s)", FACE_MODEL_URL, exc)
            why += ", download failed"
    return (
        None,
        (f"OpenCV Haar cascade (fallback: {why}; pass --face-model or set ${ENV_FACE_MODEL} to {FACE_MODEL_FILENAME})"),
        False,
    )


def resolve_face_model(path: str | None = None, allow_download: bool = True) -> tuple[str | None, str]:
    """The BlazeFace model to use and a description of where it came from; (None, ...) means Haar fallback.

    Raises FileNotFoundError when an explicitly named model (argument or env var) does not exist.
    """
    found, description, _ = _resolve(path, allow_download)
    log.info("face detector: %s", description)
    return found, description
