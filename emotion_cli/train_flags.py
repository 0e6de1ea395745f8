"""The flags of ``train``, grouped as ``--help`` shows them; their defaults come from the library's configs."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from emotion_cli.flags import HelpFormatter

if TYPE_CHECKING:  # imported by add_train, which reads their defaults, not when this module is imported
    from emotion.data.augment import AugmentConfig
    from emotion.models.networks import ModelConfig
    from emotion.training.config import TrainConfig


def add_train(sub: argparse._SubParsersAction) -> None:
    """Sub-command `train`: every training flag, in groups, with defaults from the library's configs."""
    from emotion.models.networks import ModelConfig
    from emotion.training.config import TrainConfig

    t, m, c = TrainConfig(), ModelConfig(), TrainConfig.for_model("cnn")
    aug = t.augment
    p = sub.add_parser(
        "train", help="train a model (CLIP + adapter by default, or the offline CNN)", formatter_class=HelpFormatter
    )
    p.add_argument(
        "--data",
        default=t.data,
        help="dataset: folder with train/ and test/ class folders, a folder with fer2013.csv, or the CSV",
    )
    p.add_argument(
        "--out",
        default=None,
        help="run folder for checkpoints, metrics.jsonl, logs and the report (default runs/<model>-<time>)",
    )
    _add_train_model_flags(p.add_argument_group("model"), m)
    _add_train_optim_flags(p.add_argument_group("optimisation"), t, c)
    _add_train_augment_flags(p.add_argument_group("augmentation"), aug)
    _add_train_init_flags(p.add_argument_group("starting point and teacher"), t)
    _add_train_network_flags(p.add_argument_group("network shape and CLIP fine-tuning"), t, m, c)
    _add_train_run_flags(p.add_argument_group("run"), t)


def _add_train_model_flags(g: argparse._ArgumentGroup, m: ModelConfig) -> None:
    """Flags of `train`: the network and where its CLIP weights come from."""
    g.add_argument(
        "--model",
        choices=["clip", "cnn"],
        default=m.kind,
        help="clip: open_clip encoder + emotion adapter; cnn: compact offline network",
    )
    g.add_argument(
        "--clip-model", default=m.clip_model, help="open_clip architecture, e.g. ViT-B-32, ViT-B-16, ViT-L-14"
    )
    g.add_argument(
        "--pretrained", default=m.pretrained, help="open_clip pretrained tag, resolved through the cache or a download"
    )
    g.add_argument(
        "--clip-weights",
        default=None,
        help="CLIP weights file (or env EMOTION_CLIP_WEIGHTS); 'random' for untrained weights (tests, timing)",
    )
    g.add_argument("--cache-dir", default=None, help="open_clip weights cache folder")


def _add_train_optim_flags(g: argparse._ArgumentGroup, t: TrainConfig, c: TrainConfig) -> None:
    """Flags of `train`: schedule, optimiser and loss."""
    g.add_argument(
        "--epochs", type=int, default=None, help=f"number of epochs (default: clip {t.epochs}, cnn {c.epochs})"
    )
    g.add_argument("--batch-size", type=int, default=t.batch_size, help="images per step per process")
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"learning rate of the adapter (default {t.lr}) or the whole CNN (default {c.lr})",
    )
    g.add_argument("--clip-lr", type=float, default=t.clip_lr, help="learning rate of the unfrozen CLIP blocks")
    g.add_argument(
        "--weight-decay",
        type=float,
        default=t.weight_decay,
        help="AdamW weight decay (not applied to biases and norms)",
    )
    g.add_argument(
        "--warmup-epochs", type=float, default=t.warmup_epochs, help="linear warmup before the cosine schedule"
    )
    g.add_argument("--label-smoothing", type=float, default=t.label_smoothing, help="cross-entropy label smoothing")
    g.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        help=f"validate and ship a moving average of the weights with this decay; 0 = off (default: clip {t.ema_decay}, cnn {c.ema_decay})",
    )


def _add_train_augment_flags(g: argparse._ArgumentGroup, aug: AugmentConfig) -> None:
    """Flags of `train`: what each batch of faces goes through."""
    g.add_argument(
        "--mixup",
        type=float,
        default=aug.mixup,
        help="mixup: blend pairs of faces and their labels with a Beta(a, a) weight; 0 = off (try 0.2-0.4)",
    )
    g.add_argument(
        "--cutmix",
        type=float,
        default=aug.cutmix,
        help="CutMix: paste a box of another face and mix the labels by area, Beta(a, a); 0 = off (try 1.0)",
    )
    g.add_argument(
        "--mix-prob", type=float, default=aug.mix_prob, help="share of batches mixed when --mixup or --cutmix is on"
    )
    g.add_argument(
        "--frame-jitter",
        type=float,
        default=aug.frame_jitter,
        help="share of faces framed like the app's crops of faces found in camera frames (looser or tighter, "
        "off-centre, tilted up to 20 degrees), so the network learns those crops too; 0 = off (try 0.5)",
    )
    g.add_argument(
        "--surround",
        type=float,
        default=aug.surround,
        help="share of faces whose crop, where it reaches past the face, shows a flat wall or part of another face "
        "instead of the face's reflected borders, as a camera frame shows hair and room there; 0 = off (0.5 did not "
        "narrow the frame gap in its trial: docs/frames_benchmark.md)",
    )
    g.add_argument(
        "--detector-framing",
        type=float,
        default=aug.detector_framing,
        help="share of faces cut exactly as the app's detector and crop framed them in a camera-like frame, recorded "
        "per face in --detector-framings files; 0 = off",
    )
    g.add_argument(
        "--detector-framings",
        nargs="+",
        default=[],
        metavar="FILE",
        help="recorded framings of the training faces (.npz from scripts/measure_detector_framings.py, one per seed)",
    )


def _add_train_init_flags(g: argparse._ArgumentGroup, t: TrainConfig) -> None:
    """Flags of `train`: fine-tuning and distillation."""
    g.add_argument(
        "--teacher",
        default=None,
        help="distil: also learn to match this checkpoint's predictions, e.g. assets/emotion_cnn.pt (an ensemble)",
    )
    g.add_argument(
        "--distill-weight",
        type=float,
        default=t.distill_weight,
        help="with --teacher: share of the loss spent matching the teacher",
    )
    g.add_argument(
        "--distill-temperature",
        type=float,
        default=t.distill_temperature,
        help="with --teacher: softmax temperature of the comparison",
    )
    g.add_argument(
        "--teacher-cache",
        action="store_true",
        help="with --teacher: predict each training face (and its mirror) once before training, kept in "
        "OUT/teacher_targets.pt, instead of on every augmented batch; trains at the student's own speed",
    )
    g.add_argument(
        "--init-from",
        default=None,
        help="start from this checkpoint's weights instead of a random initialisation (fine-tuning), e.g. assets/emotion_cnn.pt",
    )
    g.add_argument(
        "--init-member",
        type=int,
        default=t.init_member,
        help="with --init-from: which network of an ensemble file to start from (1-based, in file order)",
    )


def _add_train_network_flags(g: argparse._ArgumentGroup, t: TrainConfig, m: ModelConfig, c: TrainConfig) -> None:
    """Flags of `train`: the CNN's shape, the adapter's dropout and which CLIP blocks train."""
    g.add_argument(
        "--dropout",
        type=float,
        default=None,
        help=f"dropout in the adapter (default {m.dropout}) or the CNN head (default {c.model.dropout})",
    )
    g.add_argument(
        "--cnn-widths",
        default=None,
        help=f"CNN channels per stage, comma-separated (default {','.join(map(str, c.model.cnn_widths))})",
    )
    g.add_argument(
        "--cnn-block",
        choices=("plain", "residual"),
        default=None,
        help="CNN stages: plain (3x3 convs, max-pooling between stages) or residual (a residual block with "
        "squeeze-excitation per stage, strided convs) (default plain)",
    )
    g.add_argument(
        "--unfreeze-epoch",
        type=int,
        default=t.unfreeze_epoch,
        help="first epoch (1-based) in which CLIP's last blocks train; 0 = from the start",
    )
    g.add_argument(
        "--unfreeze-blocks",
        type=int,
        default=t.unfreeze_blocks,
        help="CLIP transformer blocks unfrozen, plus the final norm and projection",
    )
    g.add_argument(
        "--no-embedding-cache",
        action="store_true",
        help="run the frozen encoder every step instead of caching its embeddings (keeps full augmentation)",
    )
    g.add_argument(
        "--cache-flip",
        action="store_true",
        help="with the embedding cache, also cache mirrored images (flip augmentation, twice the caching time)",
    )


def _add_train_run_flags(g: argparse._ArgumentGroup, t: TrainConfig) -> None:
    """Flags of `train`: validation split, seeds, device and the run folder."""
    g.add_argument(
        "--val-split",
        type=float,
        default=t.val_split,
        help="carve this fraction of train for validation instead of using the test split",
    )
    g.add_argument("--seed", type=int, default=t.seed, help="random seed")
    g.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="seed of the --val-split carve-out alone (default: --seed); give every network of an ensemble the "
        "same one, so they all hold out the same faces and `calibrate` can fit on faces none of them saw",
    )
    g.add_argument(
        "--amp",
        choices=["auto", "bf16", "fp16", "off"],
        default=t.amp,
        help="mixed precision: auto = fp16 on CUDA, bf16 on CPUs with native bf16",
    )
    g.add_argument("--device", default=t.device, help="auto, cpu, cuda or cuda:N")
    g.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch; 0 = one per core (1 is steadier on a busy machine)",
    )
    g.add_argument("--max-images", type=int, default=t.max_images, help="train on at most this many images (0 = all)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --out folder that already holds a run, deleting its checkpoints and metrics (without it, or --resume, such a folder is refused)",
    )
    g.add_argument("--no-report", action="store_true", help="skip the final evaluation report of best.pt")
