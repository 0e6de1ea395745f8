"""What the app accepts from a client and what it hands back: uploaded images in, result images out.

A request to a Gradio endpoint is hostile until checked. Handlers take ``preprocess=False`` payloads
and pass them through ``client_image``, which opens only files that Gradio itself marks as client
uploads *and* that lie in Gradio's upload folder, or decodes image data sent inline; anything else
(a path to some other server file, a bare string) is refused. Result images are written to a fresh
file per request (``result_file``), so concurrent identical requests never share a file that one of
them rewrites; the app's ``CacheSweeper`` deletes uploads and results within a minute.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from gradio.utils import get_upload_folder, is_in_or_equal
from PIL import Image

from ..inference.recognizer import ImageTooLargeError, read_rgb

log = logging.getLogger(__name__)

FILE_DATA_TYPE = "gradio.FileData"  # the marker Gradio puts in the payload of a file a client uploaded
MAX_INLINE_BYTES = (
    20 * 1024 * 1024
)  # a base64 image sent inline (webcam frames) may be at most this large, like an upload
RESULTS_DIR = "emotion-results"  # sub-folder of Gradio's upload folder holding one result file per request


class PhotoError(ValueError):
    """An input that cannot be analyzed; the message is written for the user."""


def uploaded_path(payload: Any) -> Path:
    """The file of a Gradio upload payload, or PhotoError when it is not a file a client uploaded to this app.

    Gradio marks client uploads with ``meta._type == "gradio.FileData"`` and keeps them in its upload
    folder; both must hold (after resolving symlinks), as in Gradio's own check for preprocessed inputs.
    """
    if not isinstance(payload, dict):
        raise PhotoError("Only images uploaded to this app can be analyzed; please upload a JPEG, PNG or WebP image.")
    meta = payload.get("meta")
    path = payload.get("path")
    if not isinstance(meta, dict) or meta.get("_type") != FILE_DATA_TYPE or not isinstance(path, str) or not path:
        log.warning("refused a file payload without Gradio's upload marker: %r", str(path)[:200])
        raise PhotoError(
            "Only images uploaded to this app can be analyzed; this request named a file that was not uploaded."
        )
    if not is_in_or_equal(path, get_upload_folder()):
        log.warning("refused a file outside Gradio's upload folder: %r", path[:200])
        raise PhotoError("Only images uploaded to this app can be analyzed; this file was not uploaded to it.")
    return Path(path)


def _decode_data_url(url: str, max_side: int) -> np.ndarray:
    """Image data sent inline as a ``data:image/...;base64,`` URL (how the webcam may send frames)."""
    header, _, data = url.partition(",")
    if not header.startswith("data:image/") or not header.endswith(";base64"):
        raise PhotoError("Inline image data must be a base64 data:image/... URL.")
    if len(data) > MAX_INLINE_BYTES * 4 // 3 + 4:
        raise PhotoError("This image is larger than 20 MB; please send a smaller one.")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PhotoError("The inline image data is not valid base64.") from exc
    return read_rgb(io.BytesIO(raw), max_side)


def client_image(payload: Any, max_side: int) -> tuple[np.ndarray, tuple[int, int]] | None:
    """A client's image as HxWx3 uint8 RGB no larger than ``max_side`` and its original (width, height).

    ``payload`` is what a ``preprocess=False`` Gradio event receives: None, a client upload (see
    ``uploaded_path``), or inline image data (``url`` starting with ``data:image/``). Raises PhotoError
    with a message for the user for anything else, and for files that cannot be decoded.
    """
    if payload is None:
        return None
    if (
        isinstance(payload, dict)
        and isinstance(payload.get("url"), str)
        and payload["url"].startswith("data:")
        and not payload.get("path")
    ):
        try:
            rgb = _decode_data_url(payload["url"], max_side)
        except PhotoError:
            raise
        except ImageTooLargeError as exc:
            raise PhotoError(f"This image has too many pixels to analyze safely ({exc}).") from exc
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for unknown formats and corrupt data
            raise PhotoError("The image data sent could not be read as an image.") from exc
        return rgb, (rgb.shape[1], rgb.shape[0])
    return read_image_file(uploaded_path(payload), max_side)


def read_image_file(path: str | os.PathLike, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file as HxWx3 uint8 RGB no larger than ``max_side``, and its original (width, height).

    Any mode and bit depth works (grayscale, 16-bit, RGBA composited on white, palette); raises
    PhotoError for anything unreadable, gone, or too large to decode safely.
    """
    path = Path(path)
    if not path.is_file():
        raise PhotoError(
            f"“{path.name}” is no longer on the server (uploads are deleted within a minute); please upload it again."
        )
    try:
        with warnings.catch_warnings():  # the pixel count is checked by read_rgb before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                size = im.size
        return read_rgb(path, max_side), size
    except (ImageTooLargeError, Image.DecompressionBombError) as exc:
        raise PhotoError(
            f"This image has too many pixels to analyze safely ({exc}); please upload a smaller version."
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for unknown formats and truncated or corrupt files
        log.info("unreadable upload %s: %s", path.name, exc)
        raise PhotoError(
            f"“{path.name}” could not be read as an image; please upload a JPEG, PNG or WebP photo."
        ) from exc


def result_file(rgb: np.ndarray | None, fmt: str = "webp") -> str | None:
    """``rgb`` saved to a new file of its own in Gradio's upload folder; its path, for an output gr.Image.

    Gradio would otherwise save returned arrays under a hash of their content, so two identical
    requests would share one file that the second rewrites while the first is still downloading it.
    A file inside the upload folder is served as it is, and ``CacheSweeper`` removes it with the uploads.
    """
    if rgb is None or not isinstance(rgb, np.ndarray):
        return rgb
    folder = Path(get_upload_folder()) / RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    # One flat folder: the sweep deletes files, so per-request folders would pile up empty (10 a second when live).
    path = folder / f"{uuid.uuid4().hex}.{'jpg' if fmt == 'jpeg' else fmt}"
    Image.fromarray(rgb).save(path, format=fmt.upper(), **({"quality": 85} if fmt in ("jpeg", "webp") else {}))
    return str(path)
