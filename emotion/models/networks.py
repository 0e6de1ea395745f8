"""The model factory: the CLIP + adapter model and the compact offline CNN, each with its preprocessing.

``build_model(cfg)`` returns ``(model, preprocess)``; with ``cfg.members > 1`` the model is an ensemble
of that many networks, stored in one checkpoint, whose probabilities are averaged. They share everything
but, in a CNN ensemble, the kind of their stages (``member_blocks``): plain and residual networks mix.
``preprocess`` turns a batch of 48x48 faces (float in [0, 1], shape (N, 1, 48, 48)) into exactly what
that model's weights expect, so training, evaluation and the app can never disagree about
normalisation or input size.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.labels import NUM_CLASSES

log = logging.getLogger(__name__)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in every checkpoint."""

    kind: str = "clip"  # "clip" (open_clip encoder + adapter) or "cnn" (compact offline network)
    clip_model: str = "ViT-B-32"  # open_clip architecture name, e.g. ViT-B-16, ViT-L-14
    pretrained: str = "openai"  # open_clip pretrained tag used when no weights file is given
    adapter_dims: tuple[int, ...] = (1024, 512, 256)  # hidden widths of the seed's emotion adapter
    dropout: float = 0.3  # dropout after each hidden layer (adapter and CNN head)
    cnn_widths: tuple[int, ...] = (32, 64, 128, 256)  # CNN channels per stage (48, 24, 12, 6 px): 1.17M parameters
    cnn_convs: int = 2  # 3x3 conv layers per CNN stage
    cnn_block: str = "plain"  # "plain": VGG stages joined by max-pooling; "residual": one residual block with squeeze-excitation per stage, strided
    cnn_normalize: str = (
        "image"  # "image": standardise each face (robust to contrast and lighting); "dataset": fixed mean/std
    )
    num_classes: int = NUM_CLASSES  # output classes (FER2013 has 7)
    members: int = 1  # networks in the model; > 1 is an ensemble whose probabilities are averaged
    member_blocks: tuple[
        str, ...
    ] = ()  # an ensemble of plain and residual CNNs: each member's cnn_block; () = all cnn_block

    def to_dict(self) -> dict:
        """Plain-JSON form, for checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of ``to_dict``; unknown keys are ignored so older checkpoints keep loading."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        return cls(**kwargs)


class Preprocess(nn.Module):
    """Faces (N, 1, 48, 48) in [0, 1] -> model input: channel repeat, resize and normalisation."""

    def __init__(
        self,
        size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        interpolation: str = "bicubic",
        per_image: bool = False,
    ):
        super().__init__()
        self.size = size
        self.per_image = per_image
        self.interpolation = interpolation
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        channels = self.mean.shape[1]
        if x.shape[1] != channels:
            x = x.expand(-1, channels, -1, -1)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode=self.interpolation, align_corners=False)
        if self.per_image:
            # Each face to zero mean and unit variance: a photo's contrast or exposure then changes nothing.
            x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-3)
        return (x - self.mean) / self.std


def build_adapter(in_dim: int, hidden: tuple[int, ...], num_classes: int, dropout: float) -> nn.Sequential:
    """The seed's adapter: [Linear BatchNorm1d ReLU Dropout] per hidden width, then Linear to the classes."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, num_classes))
    return nn.Sequential(*layers)


class ClipEmotionModel(nn.Module):
    """open_clip image encoder followed by the emotion adapter; forward returns logits."""

    def __init__(self, encoder: nn.Module, embed_dim: int, cfg: ModelConfig):
        super().__init__()
        self.encoder = encoder
        self.adapter = build_adapter(embed_dim, cfg.adapter_dims, cfg.num_classes, cfg.dropout)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings of preprocessed images."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.embed(x).float())

    def unfreezable_parameters(self, blocks: int) -> list[nn.Parameter]:
        """Parameters of the last ``blocks`` transformer blocks plus the final norm and projection."""
        enc = self.encoder
        params: list[nn.Parameter] = []
        resblocks = getattr(getattr(enc, "transformer", None), "resblocks", None)
        if resblocks is None:
            raise ValueError(
                f"{type(enc).__name__} has no transformer.resblocks; partial unfreezing supports open_clip ViTs"
            )
        if blocks > 0:
            for block in list(resblocks)[-blocks:]:
                params += list(block.parameters())
        if getattr(enc, "ln_post", None) is not None:
            params += list(enc.ln_post.parameters())
        if isinstance(getattr(enc, "proj", None), nn.Parameter):
            params.append(enc.proj)
        return params


def classifier_head(in_ch: int, cfg: ModelConfig) -> nn.Sequential:
    """The CNNs' head: global average pooling, dropout, linear to the classes."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(in_ch, cfg.num_classes)
    )


class EmotionCNN(nn.Module):
    """Compact VGG-style network for 48x48 grayscale faces.

    Each stage is ``cnn_convs`` x (3x3 conv, BatchNorm, ReLU) followed by 2x2 max-pooling, except the
    last, which ends in global average pooling; a dropout + linear head gives the logits.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for i, width in enumerate(cfg.cnn_widths):
            for _ in range(cfg.cnn_convs):
                layers += [
                    nn.Conv2d(in_ch, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                in_ch = width
            if i < len(cfg.cnn_widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = classifier_head(in_ch, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SqueezeExcite(nn.Module):
    """Channel attention: rescale each channel by a gate computed from the global average of all channels."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class ResidualStage(nn.Module):
    """``convs`` x (3x3 conv, BatchNorm) with ReLUs between, squeeze-excitation, plus a shortcut; the first
    conv (and a 1x1 projection on the shortcut) halves the resolution when ``stride`` is 2."""

    def __init__(self, in_ch: int, width: int, convs: int, stride: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [
                nn.Conv2d(in_ch if i == 0 else width, width, 3, stride=stride if i == 0 else 1, padding=1, bias=False),
                nn.BatchNorm2d(width),
            ]
            if i < convs - 1:
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers, SqueezeExcite(width))
        self.stride = stride
        # The projection subsamples, then applies a 1x1 conv: the arithmetic of a strided 1x1 conv, which
        # crashed PyTorch 2.14's channels-last fp32 backward on the CPU (8 -> 16 channels, 48 px).
        self.shortcut = (
            nn.Identity()
            if stride == 1 and in_ch == width
            else nn.Sequential(nn.Conv2d(in_ch, width, 1, bias=False), nn.BatchNorm2d(width))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        return F.relu(self.body(x) + self.shortcut(skip))


class EmotionResNet(nn.Module):
    """Residual counterpart of ``EmotionCNN`` (``cnn_block="residual"``): a 3x3 stem, then one residual
    stage per width, each but the first strided where the plain network max-pools, and the same head.
    Same widths and depth, a different inductive bias: a more diverse ensemble member."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        first = cfg.cnn_widths[0]
        layers: list[nn.Module] = [
            nn.Conv2d(1, first, 3, padding=1, bias=False),
            nn.BatchNorm2d(first),
            nn.ReLU(inplace=True),
        ]
        in_ch = first
        for i, width in enumerate(cfg.cnn_widths):
            layers.append(ResidualStage(in_ch, width, cfg.cnn_convs, stride=1 if i == 0 else 2))
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.head = classifier_head(in_ch, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Ensemble(nn.Module):
    """Networks trained separately, run on the same input; forward returns the log of their mean
    probabilities, so ``softmax`` of the output is the ensemble's prediction and callers need not know."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([m(x).float().log_softmax(-1) for m in self.members])
        return log_probs.logsumexp(0) - math.log(len(self.members))


CNN_BLOCKS = {"plain": EmotionCNN, "residual": EmotionResNet}  # ModelConfig.cnn_block -> network class


def build_model(
    cfg: ModelConfig, clip_weights: str | None = None, cache_dir: str | None = None
) -> tuple[nn.Module, Preprocess]:
    """Build the model ``cfg`` describes and the preprocessing its weights expect.

    For CLIP, ``clip_weights`` is a file path, ``"random"`` (no pretrained weights, for tests and
    timing) or None to resolve ``cfg.pretrained`` through the cache or a download (see ``weights``).
    """
    if cfg.members > 1:
        built = [_build_single(member_config(cfg, i), clip_weights, cache_dir) for i in range(cfg.members)]
        return Ensemble([model for model, _ in built]), built[0][1]
    return _build_single(cfg, clip_weights, cache_dir)


def member_config(cfg: ModelConfig, member: int) -> ModelConfig:
    """The config of network ``member`` (0-based) of the model ``cfg`` describes, as a single network."""
    if not cfg.member_blocks:
        return replace(cfg, members=1)
    if len(cfg.member_blocks) != cfg.members:
        raise ValueError(f"member_blocks names {len(cfg.member_blocks)} networks, but the ensemble has {cfg.members}")
    return replace(cfg, members=1, cnn_block=cfg.member_blocks[member], member_blocks=())


def _build_single(cfg: ModelConfig, clip_weights: str | None, cache_dir: str | None) -> tuple[nn.Module, Preprocess]:
    if cfg.kind == "cnn":
        if cfg.cnn_normalize not in ("image", "dataset"):
            raise ValueError(f"cnn_normalize must be 'image' or 'dataset', got {cfg.cnn_normalize!r}")
        if cfg.cnn_block not in CNN_BLOCKS:
            raise ValueError(f"cnn_block must be one of {', '.join(CNN_BLOCKS)}, got {cfg.cnn_block!r}")
        net = CNN_BLOCKS[cfg.cnn_block](cfg)
        if cfg.cnn_normalize == "image":
            return net, Preprocess(48, (0.0,), (1.0,), "bilinear", per_image=True)
        # FER2013 pixel statistics (mean 0.51, std 0.25 over the training set) rounded.
        return net, Preprocess(48, (0.5,), (0.25,), "bilinear")
    if cfg.kind == "clip":
        from .weights import load_clip_encoder

        encoder, embed_dim, pp = load_clip_encoder(cfg.clip_model, cfg.pretrained, clip_weights, cache_dir)
        model = ClipEmotionModel(encoder, embed_dim, cfg)
        return model, Preprocess(pp["size"], pp["mean"], pp["std"], pp["interpolation"])
    raise ValueError(f"unknown model kind '{cfg.kind}': expected 'clip' or 'cnn'")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
