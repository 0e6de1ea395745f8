"""Why this label: Grad-CAM saliency of each face, and its overlay on the frame.

``gradcam`` explains 48x48 face crops: for every network of the model (one, or each member of an ensemble)
the last convolutional stage's activations are weighted by the gradient of the explained class's logit
(Grad-CAM, Selvaraju et al. 2017), the map of each network and test-time view is scaled to a peak of 1,
mapped back onto the face, averaged, upsampled to 48x48 and normalised to [0, 1]. The explained class is
the ensemble's prediction unless the caller names one (the app names the label it shows).

``overlay_heatmaps`` blends the maps onto a frame, each warped back onto the part of the frame its crop
came from. That mapping lives in one helper, ``crop_to_frame``: a 2x3 affine matrix from crop pixels to
frame pixels. It mirrors ``faces.crop_faces`` (an axis-aligned square around the box); if the crop becomes
another warp (e.g. an eye-aligned similarity transform), ``crop_to_frame`` returns the inverse of that warp
and nothing else changes.

CLIP models (a vision transformer) have no convolutional stage: they raise ``ExplainError``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data.dataset import FACE_SIZE, to_face48
from ..data.labels import CLASS_NAMES
from ..models.checkpoint import LoadedModel, member_network
from ..utils.runtime import amp_dtype, autocast_for
from .align import fer_transform
from .classifier import TTA_VIEWS, EmotionClassifier, resolve_tta, tta_views
from .faces import Box, _fer_square, as_rgb, crop_faces

log = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.4  # weight of the colour map where it covers a face; the face stays recognisable under it
CROP_MARGIN = 0.25  # faces.crop_faces' default margin: the crop the recognizer classified
# The convolutional stages run in this autocast setting ("auto": bf16 on a CPU with native bf16, fp16 on CUDA, else
# fp32); the heads and gradients stay fp32. bf16 was 2-3x faster than fp32 for the shipped six networks on a 2-core
# AMD EPYC, and a map of 6x6 cells shows nothing of its rounding.
FEATURES_AMP = "auto"
MAX_NAME_CHARS = 100  # output file names are cut to this many characters of the input's name


class ExplainError(ValueError):
    """The model or the request cannot be explained; the message says why and what to do instead."""


def _resolve(model: EmotionClassifier | LoadedModel, tta: str | None) -> tuple[LoadedModel, str]:
    """The loaded model and the TTA mode to explain with: the classifier's own, or the checkpoint's setting."""
    if isinstance(model, EmotionClassifier):
        return model.loaded, model.tta if tta is None else resolve_tta(tta, model.loaded)
    if isinstance(model, LoadedModel):
        return model, resolve_tta(tta, model)
    raise TypeError(f"gradcam explains an EmotionClassifier or a LoadedModel, got {type(model).__name__}")


def conv_networks(loaded: LoadedModel) -> list[nn.Module]:
    """The model's networks, each with a convolutional ``features`` stage and a ``head``; ExplainError otherwise."""
    if loaded.config.kind != "cnn":
        raise ExplainError(
            f"{loaded.name} is a CLIP vision transformer, which has no convolutional stage for "
            "Grad-CAM; explanations need a CNN checkpoint such as the shipped assets/emotion_cnn.pt"
        )
    nets = [member_network(loaded, i) for i in range(loaded.config.members)]
    for net in nets:
        if not isinstance(getattr(net, "features", None), nn.Module) or not isinstance(
            getattr(net, "head", None), nn.Module
        ):
            raise ExplainError(
                f"{loaded.name}: a {type(net).__name__} has no convolutional 'features' stage and 'head', "
                "so Grad-CAM cannot explain it"
            )
    return nets


def check_explainable(model: EmotionClassifier | LoadedModel) -> None:
    """Raise ExplainError when ``model`` cannot be explained (before any work is done for it)."""
    conv_networks(_resolve(model, None)[0])


def _face_batch(faces: Sequence[np.ndarray] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """48x48 uint8 crops as a float tensor (N, 1, 48, 48) in [0, 1]; ValueError for anything else."""
    try:
        arr = (
            faces.cpu().numpy()
            if isinstance(faces, torch.Tensor)
            else np.asarray(faces)
            if len(faces)
            else np.zeros((0, 48, 48), np.uint8)
        )
    except (TypeError, ValueError) as exc:  # e.g. crops of different sizes
        raise ValueError(f"gradcam takes 48x48 uint8 face crops (N, 48, 48): {exc}") from exc
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[1:] != (FACE_SIZE, FACE_SIZE):
        raise ValueError(f"gradcam takes 48x48 uint8 face crops (N, 48, 48), got {arr.dtype} of shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr)).unsqueeze(1).float().div_(255.0)


def _class_indices(classes: Sequence[int | str], n: int) -> torch.Tensor:
    """Class names or indices as a (n,) long tensor; ValueError for a wrong count or an unknown class."""
    if len(classes) != n:
        raise ValueError(f"{len(classes)} classes for {n} faces: give one class per face")
    out = []
    for c in classes:
        if isinstance(c, str) and c in CLASS_NAMES:
            out.append(CLASS_NAMES.index(c))
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(CLASS_NAMES):
            out.append(int(c))
        else:
            raise ValueError(
                f"unknown class {str(c)[:40]!r}: use one of {', '.join(CLASS_NAMES)} or 0-{len(CLASS_NAMES) - 1}"
            )
    return torch.tensor(out, dtype=torch.long)


def _unview(cams: torch.Tensor, mode: str, n: int) -> torch.Tensor:
    """Maps (V * N, 48, 48) of the TTA views (view-major, as ``tta_views`` stacks them) back onto the faces: (V, N, 48, 48)."""
    out = []
    for i, (dx, dy, mirror) in enumerate(TTA_VIEWS[mode]):
        cam = cams[i * n : (i + 1) * n]
        if mirror:
            cam = cam.flip(-1)
        # A view's pixel (y, x) shows the face's (y + dy, x + dx): shift back; the uncovered edge gets 0.
        out.append(F.pad(cam, (dx, -dx, dy, -dy)) if dx or dy else cam)
    return torch.stack(out)


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map (..., H, W) stretched to [0, 1]; a flat map (nothing salient) becomes all zeros."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 1e-8, (maps - low) / span.clamp_min(1e-8), torch.zeros_like(maps))


def _network_pass(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations of the last conv stage as a leaf that requires grad, logits built from them with a graph)."""
    with torch.no_grad(), autocast_for(x.device, amp_dtype(x.device, FEATURES_AMP)):
        acts = net.features(x)
    # A fresh leaf: the backward pass stops at it, so it never reaches (or fills .grad of) the shared weights.
    acts = acts.detach().float().contiguous().requires_grad_(True)
    return acts, net.head(acts).float()


def gradcam(
    model: EmotionClassifier | LoadedModel,
    faces: Sequence[np.ndarray] | np.ndarray | torch.Tensor,
    classes: Sequence[int | str] | None = None,
    tta: str | None = None,
) -> np.ndarray:
    """Grad-CAM heatmaps (N, 48, 48) float32 in [0, 1] for 48x48 uint8 face crops (N, 48, 48).

    ``classes`` (names or indices, one per face) picks the class each map explains; None explains the
    ensemble's prediction (argmax of the mean probability over networks and views). ``tta`` (default: the
    classifier's or checkpoint's setting) also explains each view (e.g. the mirror) and maps it back onto
    the face. The model is used as loaded: nothing in it is changed, and it may be shared with other threads.
    """
    loaded, mode = _resolve(model, tta)
    nets = conv_networks(loaded)
    batch = _face_batch(faces)
    n = len(batch)
    if n == 0:
        return np.zeros((0, FACE_SIZE, FACE_SIZE), np.float32)
    wanted = None if classes is None else _class_indices(classes, n)
    device = next(loaded.model.parameters()).device
    # Callers may hold inference mode (the classifier runs under it); gradients need it off, and grad on, here.
    with torch.inference_mode(False), torch.enable_grad():
        x = loaded.preprocess(tta_views(batch.to(device), mode)).contiguous()
        passes = [_network_pass(net, x) for net in nets]
        if wanted is None:
            probs = torch.stack([logits.detach().softmax(-1) for _, logits in passes]).mean(0)  # (V * N, classes)
            wanted = probs.view(-1, n, probs.shape[-1]).mean(0).argmax(-1).cpu()
        target = wanted.to(device).repeat(len(x) // n)
        # One backward pass for every network (each score depends on its own activations only): one engine run, not six.
        score = sum(logits.gather(1, target[:, None]).sum() for _, logits in passes)
        all_grads = torch.autograd.grad(score, [acts for acts, _ in passes])
        maps = []
        for (acts, _), grads in zip(passes, all_grads, strict=False):
            cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * acts.detach()).sum(1))  # (V * N, h, w)
            cam = cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)  # each network and view has an equal say
            cam = F.interpolate(cam[:, None], size=(FACE_SIZE, FACE_SIZE), mode="bilinear", align_corners=False)[:, 0]
            maps.append(_unview(cam, mode, n).mean(0))
        heat = _normalise(torch.stack(maps).mean(0))
    return torch.nan_to_num(heat, nan=0.0).clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)


def crop_to_frame(
    box: Box | Sequence[int], frame_shape: Sequence[int], *, whole_image: bool = False, margin: float = CROP_MARGIN
) -> np.ndarray:
    """The 2x3 affine matrix taking pixel coordinates of a face's 48x48 crop to the frame it was cut from.

    The one place that knows how crops are cut (mirrors ``faces.crop_faces`` and, for ``whole_image``,
    ``data.to_face48``'s centre crop); a crop made by a warp ``M`` (frame -> crop) maps back with
    ``cv2.invertAffineTransform(M)`` scaled to 48 px.
    """
    if whole_image:
        height, width = int(frame_shape[0]), int(frame_shape[1])
        side = min(height, width)
        x0, y0 = (width - side) / 2, (height - side) / 2
    else:
        b = box if isinstance(box, Box) else Box(*(int(v) for v in box[:4]))
        aligned = _aligned_crop_to_frame(b.eyes) if b.eyes is not None else None
        if aligned is not None:
            return aligned
        x0, y0, side = _fer_square(b, margin)
    s = side / FACE_SIZE
    # Crop pixel u covers frame [x0 + u*s, x0 + (u+1)*s): its centre u maps to x0 + (u + 0.5)*s - 0.5.
    return np.array([[s, 0.0, x0 + 0.5 * s - 0.5], [0.0, s, y0 + 0.5 * s - 0.5]], dtype=np.float64)


def _aligned_crop_to_frame(eyes: tuple[float, float, float, float]) -> np.ndarray | None:
    """The crop-pixel -> frame-pixel matrix of an eye-aligned crop (``align.aligned_crop``); None where that crop
    falls back to the box's square (eyes that are not two distinct points)."""
    try:
        frame_to_crop = fer_transform(eyes)
    except ValueError:
        return None
    inverse = cv2.invertAffineTransform(frame_to_crop)  # continuous coordinates, (0, 0) at a corner
    a, t = inverse[:, :2], inverse[:, 2]
    # Crop pixel u's centre is at u + 0.5 in continuous units; frame pixel x's centre is at x + 0.5.
    return np.hstack([a, (a @ np.array([0.5, 0.5]) + t - 0.5)[:, None]])


def _blend_one(out: np.ndarray, heat: np.ndarray, matrix: np.ndarray, alpha: float) -> None:
    """Blend one heatmap, coloured, into ``out`` in place where ``matrix`` puts its crop (only that rectangle is warped)."""
    height, width = out.shape[:2]
    corners = (
        matrix
        @ np.array(
            [
                [-0.5, -0.5, 1],
                [FACE_SIZE - 0.5, -0.5, 1],
                [-0.5, FACE_SIZE - 0.5, 1],
                [FACE_SIZE - 0.5, FACE_SIZE - 0.5, 1],
            ],
            dtype=np.float64,
        ).T
    )
    x0, y0 = max(0, int(np.floor(corners[0].min()))), max(0, int(np.floor(corners[1].min())))
    x1, y1 = min(width, int(np.ceil(corners[0].max())) + 1), min(height, int(np.ceil(corners[1].max())) + 1)
    if x1 <= x0 or y1 <= y0:
        return  # the crop lies outside the frame
    local = matrix.copy()
    local[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    level = np.round(np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0) * 255).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(level, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    warped = cv2.warpAffine(colour, local, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(
        np.ones((FACE_SIZE, FACE_SIZE), np.float32),
        local,
        size,
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    a = (alpha * mask)[:, :, None]
    roi = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.round(roi * (1.0 - a) + warped.astype(np.float32) * a).astype(np.uint8)


def overlay_heatmaps(
    rgb: np.ndarray,
    boxes: Sequence[Box | Sequence[int]],
    heatmaps: np.ndarray,
    *,
    whole_image: bool = False,
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """A copy of ``rgb`` with each heatmap (N, 48, 48, values in [0, 1]) coloured (JET: blue low, red high) and
    blended at ``alpha`` over the square its face's crop was cut from (see ``crop_to_frame``)."""
    out = as_rgb(rgb).copy()
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    if heatmaps.ndim != 3 or heatmaps.shape[1:] != (FACE_SIZE, FACE_SIZE) or len(heatmaps) != len(boxes):
        raise ValueError(f"expected one 48x48 heatmap per box ({len(boxes)}), got an array of shape {heatmaps.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    for box, heat in zip(boxes, heatmaps, strict=False):
        _blend_one(out, heat, crop_to_frame(box, out.shape, whole_image=whole_image), alpha)
    return out


def _face_box(face: dict) -> Box:
    """The Box a result of ``Recognizer.analyze`` was cropped from, eyes included when it has usable ones."""
    eyes = face.get("eyes")
    usable = isinstance(eyes, (list, tuple)) and len(eyes) == 4 and all(isinstance(v, (int, float)) for v in eyes)
    return Box(*(int(v) for v in face["box"][:4]), eyes=tuple(float(v) for v in eyes) if usable else None)


def explain_image(
    classifier: EmotionClassifier, rgb: np.ndarray, faces: Sequence[dict], *, whole_image: bool = False
) -> np.ndarray:
    """``rgb`` with the saliency of each face of ``Recognizer.analyze``'s result (``faces``) overlaid, explaining
    the label each face got; draw boxes and labels on top with ``overlay.draw_faces``. ExplainError for CLIP."""
    image = as_rgb(rgb)
    if not faces:
        return image.copy()
    boxes = [_face_box(f) for f in faces]
    crops = [to_face48(image)] if whole_image else crop_faces(image, boxes, CROP_MARGIN)  # as the recognizer cut them
    heat = gradcam(classifier, np.stack(crops), [f["label"] for f in faces])
    return overlay_heatmaps(image, boxes, heat, whole_image=whole_image)


def prepare_out_dir(path: str | os.PathLike) -> Path:
    """The folder explained pictures go to, created if missing; ExplainError when it is a file or cannot be made."""
    if not str(path).strip():
        raise ExplainError("--explain needs a folder path, got an empty one")
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ExplainError(f"--explain {out} is a file, not a folder: give a folder path (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExplainError(
            f"cannot create the --explain folder {out} ({exc.strerror or exc}); pick a writable folder"
        ) from exc
    return out


def _png_name(image: str, taken: set[str]) -> str:
    """``<input name>.png``, cut to MAX_NAME_CHARS, numbered when two inputs share a name; only the base name
    of the input is used, so no input path can place a file outside the folder."""
    stem = (Path(image).stem or "image")[:MAX_NAME_CHARS]
    name, i = f"{stem}.png", 2
    while name in taken:
        name, i = f"{stem}-{i}.png", i + 1
    taken.add(name)
    return name


def write_explanations(
    results: Sequence[dict], classifier: EmotionClassifier, out_dir: Path, *, whole_image: bool = False
) -> list[Path]:
    """One PNG per readable image of ``recognizer.predict_files``' ``results``: its faces' saliency, boxes and
    labels, in ``out_dir`` (see ``prepare_out_dir``); returns the files written. Images that could not be
    read are skipped (their result holds the error)."""
    from .overlay import draw_faces
    from .recognizer import read_rgb

    written, taken = [], set()
    for result in results:
        if "faces" not in result:
            continue
        try:
            rgb = read_rgb(result["image"])
        except Exception as exc:  # noqa: BLE001 - the file changed since it was analyzed; skip it, as predict_files does
            log.warning("cannot read %s again to explain it (%s)", result["image"], exc)
            continue
        picture = draw_faces(explain_image(classifier, rgb, result["faces"], whole_image=whole_image), result["faces"])
        path = out_dir / _png_name(str(result["image"]), taken)
        try:
            Image.fromarray(picture).save(path, format="PNG")
        except OSError as exc:
            raise ExplainError(
                f"cannot write {path} ({exc.strerror or exc}); pick a writable --explain folder"
            ) from exc
        log.info("explained %s -> %s", result["image"], path)
        written.append(path)
    return written
