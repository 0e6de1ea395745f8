"""The Upload (photo) tab: its handler, callable directly, and its layout.

Handlers never raise into Gradio: bad input becomes a message (and a toast for real problems), so
no stack trace ever reaches the user. Errors are logged here.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from ..data.labels import display
from ..inference.explain import ExplainError, explain_image
from ..inference.faces import as_rgb
from ..inference.overlay import draw_faces
from .config import IMAGE_HEIGHT, MAX_SIDE, AppConfig
from .inputs import PhotoError, client_image, read_image_file, result_file
from .live import fit_within, label_value, no_model_message

if TYPE_CHECKING:
    from .model_panel import ModelManager

log = logging.getLogger(__name__)

MAX_FACE_LABELS = 6  # probability panels shown for a photo; the JSON always has every face
SMALL_FACE_PX = 48  # faces smaller than a FER2013 crop are upscaled for the model and less reliable
RESULT_FORMAT = "webp"  # the annotated photo sent back (as gr.Image's default format would)


def load_photo(value: Any, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A photo as HxWx3 uint8 RGB no larger than ``max_side``, and its original (width, height).

    ``value`` is a local file path, a dict with ``path`` or an image array, from Python callers; requests
    from clients go through ``analyze_upload``, which accepts only files that were uploaded. Any mode
    works (grayscale, 16-bit, RGBA composited on white, palette); raises PhotoError for anything unreadable.
    """
    if isinstance(value, dict):
        value = value.get("path")
    if isinstance(value, np.ndarray):
        try:
            rgb = as_rgb(value)
        except ValueError as exc:
            raise PhotoError(f"This image could not be used: {exc}") from exc
        return fit_within(rgb, max_side), (rgb.shape[1], rgb.shape[0])
    if not isinstance(value, (str, os.PathLike)):
        raise PhotoError("No photo was received; please upload a JPEG, PNG or WebP image.")
    return read_image_file(value, max_side)


def _hidden_labels(count: int = MAX_FACE_LABELS) -> list:
    return [gr.Label(value=None, visible=False) for _ in range(count)]


def analyze_photo(
    models: ModelManager,
    photo: Any,
    whole_image: bool = False,
    max_side: int = MAX_SIDE,
    *,
    from_client: bool = False,
    explain: bool = False,
) -> tuple:
    """A photo -> (annotated image, message, faces JSON, one gr.Label update per face panel).

    Faces are largest first; ``whole_image`` classifies the whole picture as one face (for face crops).
    ``explain`` overlays each face's Grad-CAM saliency (what the label rests on) under the boxes.
    ``from_client``: ``photo`` is a request's unprocessed payload, so only an uploaded file (or inline
    image data) is opened, never another path on the server (see ``inputs.client_image``).
    """
    if photo is None:
        return None, "Upload a photo (JPEG, PNG or WebP) to see the emotion of each face.", [], *_hidden_labels()
    try:
        rgb, (width, height) = client_image(photo, max_side) if from_client else load_photo(photo, max_side)
    except PhotoError as exc:
        gr.Warning(str(exc))
        return None, f"⚠️ {exc}", [], *_hidden_labels()
    recognizer = models.recognizer
    if recognizer is None:
        return rgb, no_model_message(models), [], *_hidden_labels()
    try:
        faces = recognizer.analyze(rgb, whole_image=whole_image)
        shown, note = _explained(recognizer, rgb, faces, whole_image) if explain and faces else (rgb, None)
        annotated = draw_faces(shown, faces)
    except Exception:
        log.exception("photo analysis failed")
        gr.Warning("Something went wrong analyzing this photo; the details are in the server log.")
        return rgb, "⚠️ This photo could not be analyzed.", [], *_hidden_labels()
    notes = [note] if note else []
    if max(width, height) > max(rgb.shape[:2]):
        notes.append(f"Analyzed at {rgb.shape[1]}×{rgb.shape[0]} (downscaled from {width}×{height}).")
    if not faces:
        message = (
            "No face found in this photo. Faces that are small, turned away or partly covered are hard to "
            "detect: try a closer, well-lit photo, or tick **Classify the whole image** if it already is a face crop."
        )
        gr.Info("No face found in this photo.")
        return annotated, " ".join([message, *notes]), [], *_hidden_labels()
    summary = ", ".join(f"{display(f['label'])} ({f['score']:.0%})" for f in faces[:MAX_FACE_LABELS])
    message = f"Found {len(faces)} face{'s' if len(faces) != 1 else ''}, largest first: {summary}."
    if len(faces) > MAX_FACE_LABELS:
        notes.append(f"Bars are shown for the {MAX_FACE_LABELS} largest faces; the JSON below lists all {len(faces)}.")
    if len(faces) >= models.detector.max_faces and not whole_image:
        notes.append(f"At most {models.detector.max_faces} faces are analyzed per photo (the largest ones).")
    small = [str(i + 1) for i, f in enumerate(faces) if not whole_image and min(f["box"][2:]) < SMALL_FACE_PX]
    if small:
        notes.append(
            f"Face {', '.join(small)} {'is' if len(small) == 1 else 'are'} smaller than {SMALL_FACE_PX} px, "
            "so less reliable."
        )
    labels = [
        gr.Label(value=label_value(f), label=f"Face {i + 1}: {display(f['label'])}", visible=True)
        for i, f in enumerate(faces[:MAX_FACE_LABELS])
    ]
    labels += _hidden_labels(MAX_FACE_LABELS - len(labels))
    return annotated, " ".join([message, *notes]), faces, *labels


def _explained(recognizer: Any, rgb: np.ndarray, faces: list[dict], whole_image: bool) -> tuple[np.ndarray, str | None]:
    """(``rgb`` with each face's saliency overlaid, None), or (``rgb``, why not) with a toast when it cannot be explained."""
    try:
        return explain_image(recognizer.classifier, rgb, faces, whole_image=whole_image), None
    except ExplainError as exc:  # e.g. a CLIP model: no convolutional stage to explain
        gr.Warning(str(exc))
        return rgb, f"No explanation: {exc}"
    except Exception:
        log.exception("Grad-CAM failed")
        gr.Warning("The explanation could not be computed; the details are in the server log.")
        return rgb, "No explanation: it could not be computed."


def analyze_upload(
    models: ModelManager, payload: Any, whole_image: bool = False, max_side: int = MAX_SIDE, explain: bool = False
) -> tuple:
    """The Upload tab's event handler: ``analyze_photo`` for a client's request, with the result in a file of its own.

    ``payload`` is Gradio's unprocessed input: only a file the client uploaded (or inline image data)
    is opened; anything else, such as a path to another file on the server, is refused with a message.
    """
    annotated, *rest = analyze_photo(
        models, payload, whole_image, max_side, from_client=True, explain=explain is True
    )  # unprocessed: only a real true turns it on
    return result_file(annotated, RESULT_FORMAT), *rest


def build_upload_tab(models: ModelManager, config: AppConfig) -> None:
    """The Upload tab: a photo of any size and mode in, annotated image, one probability panel per face and JSON."""
    with gr.Tab("Upload a photo", id="upload"):
        with gr.Row():
            with gr.Column():
                # type="filepath" and preprocess=False below: the handler checks that the file was uploaded and decodes
                # it itself, so a corrupt upload gets a friendly message instead of failing inside Gradio's preprocessing.
                photo = gr.Image(
                    sources=["upload", "clipboard"],
                    type="filepath",
                    label="Photo",
                    height=IMAGE_HEIGHT,
                    elem_id="upload-photo",
                )
                whole = gr.Checkbox(
                    False,
                    label="Classify the whole image",
                    info="skip face detection (for photos that are one face crop)",
                )
                explain = gr.Checkbox(
                    False,
                    label="Explain (Grad-CAM)",
                    elem_id="upload-explain",
                    info="colour each face by how much each part of it drove its label (red: most)",
                )
                run = gr.Button("Analyze", variant="primary")
            with gr.Column():
                annotated = gr.Image(label="Result", interactive=False, height=IMAGE_HEIGHT, elem_id="upload-annotated")
                message = gr.Markdown(elem_id="upload-message")
        with gr.Row():
            labels = [
                gr.Label(num_top_classes=7, visible=False, elem_classes="face-label") for _ in range(MAX_FACE_LABELS)
            ]
        with gr.Accordion("Faces as JSON", open=False):
            faces_json = gr.JSON(label="Faces", elem_id="upload-json")

        # explain is the last input, with a default: API callers that send (photo, whole image) keep working.
        gr.on(
            [photo.upload, run.click],
            lambda p, w, e=False: analyze_upload(models, p, w, config.max_side, e),
            inputs=[photo, whole, explain],
            outputs=[annotated, message, faces_json, *labels],
            preprocess=False,
            api_name="analyze_photo",
            concurrency_limit=2,
        )
