"""Explicit resolution of open_clip image-encoder weights.

Tried in order, each step logged:
  1. an explicit file (``clip_weights`` argument or ``$EMOTION_CLIP_WEIGHTS``);
  2. open_clip's cache (``cache_dir``, else open_clip's and Hugging Face's defaults);
  3. a download through open_clip, with a progress bar.
When all fail a ``WeightsError`` says how to provide the file. Random weights come only when asked
for with ``clip_weights="random"``; they are never a silent fallback.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch.nn as nn

log = logging.getLogger(__name__)

RANDOM = "random"
ENV_VAR = "EMOTION_CLIP_WEIGHTS"
_CONFIG_DIR = Path(__file__).with_name("clip_configs")  # tiny test architectures, e.g. emotion-tiny-vit


class WeightsError(RuntimeError):
    """CLIP weights could not be found or loaded; the message says how to provide them."""


def _open_clip():
    import open_clip

    open_clip.add_model_config(_CONFIG_DIR)
    return open_clip


def _cached_file(tag_cfg: dict, cache_dir: str | None) -> str | None:
    """The weights file for a pretrained tag if it is already in a local cache; never touches the network."""
    hf = tag_cfg.get("hf_hub", "")
    if hf:
        from huggingface_hub import try_to_load_from_cache

        model_id, filename = os.path.split(hf.rstrip("/")) if not hf.endswith("/") else (hf.rstrip("/"), "")
        for name in filter(None, [filename, "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]):
            found = try_to_load_from_cache(model_id, name, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = tag_cfg.get("url", "")
    if url:
        candidate = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    return None


def resolve_clip_weights(
    model_name: str, pretrained: str, clip_weights: str | None = None, cache_dir: str | None = None
) -> str:
    """Path of the weights file to load, or ``"random"``; see the module docstring for the order."""
    open_clip = _open_clip()
    explicit = clip_weights or os.environ.get(ENV_VAR)
    if explicit == RANDOM:
        log.warning("CLIP %s: using RANDOM weights, as asked (for tests and timing only)", model_name)
        return RANDOM
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(f"CLIP weights file {path} does not exist (from --clip-weights or ${ENV_VAR})")
        log.info("CLIP %s: step 1, explicit weights file %s", model_name, path)
        return str(path)
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise WeightsError(
            f"open_clip has no pretrained tag '{pretrained}' for {model_name} (known: {tags}); pass --clip-weights FILE"
        )
    cached = _cached_file(tag_cfg, cache_dir)
    if cached:
        log.info("CLIP %s/%s: step 2, found in cache %s", model_name, pretrained, cached)
        return cached
    log.info(
        "CLIP %s/%s: step 2, not in cache %s; step 3, downloading", model_name, pretrained, cache_dir or "(default)"
    )
    try:
        return open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as exc:
        source = tag_cfg.get("hf_hub") or tag_cfg.get("url")
        raise WeightsError(
            f"could not download CLIP {model_name}/{pretrained} weights from {source} ({type(exc).__name__}: {str(exc)[:200]}). "
            f"Without network access, copy the file to this machine and pass --clip-weights PATH (or set ${ENV_VAR}), "
            f"or put it in the cache given by --cache-dir. Use --model cnn for the offline model."
        ) from exc


def load_clip_encoder(
    model_name: str, pretrained: str, clip_weights: str | None = None, cache_dir: str | None = None
) -> tuple[nn.Module, int, dict]:
    """The open_clip image tower (text tower dropped), its embedding width and its preprocessing config."""
    open_clip = _open_clip()
    if open_clip.get_model_config(model_name) is None:
        raise WeightsError(
            f"unknown open_clip architecture '{model_name}'; choose one of open_clip.list_models(), e.g. ViT-B-32, ViT-B-16, ViT-L-14"
        )
    weights = resolve_clip_weights(model_name, pretrained, clip_weights, cache_dir)
    # The pretrained tag fixes the activation (OpenAI weights use QuickGELU) and the normalisation,
    # also when the file comes from elsewhere or the weights are random, so checkpoints stay compatible.
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    pp = {k: tag_cfg[k] for k in ("mean", "std", "interpolation") if k in tag_cfg}
    try:
        clip = open_clip.create_model(
            model_name,
            pretrained=None if weights == RANDOM else weights,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg=pp or None,
            cache_dir=cache_dir,
        )
    except Exception as exc:
        raise WeightsError(
            f"could not load CLIP {model_name} weights from {weights}: {type(exc).__name__}: {str(exc)[:300]}"
        ) from exc
    cfg = open_clip.get_model_preprocess_cfg(clip)
    size = cfg.get("size", 224)
    preprocess = {
        "size": size[0] if isinstance(size, (tuple, list)) else int(size),
        "mean": tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        "std": tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
        "interpolation": cfg.get("interpolation", "bicubic"),
    }
    embed_dim = open_clip.get_model_config(model_name)["embed_dim"]
    return clip.visual, embed_dim, preprocess
