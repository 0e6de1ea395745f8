"""Command line for the emotion package (console script `emotion`): train, evaluate, calibrate, predict, ship,
export, bench, video and pack.

    python train_cli.py train    --data ../shared/fer2013 --out runs/clip1
    python train_cli.py evaluate --checkpoint runs/clip1/best.pt --data ../shared/fer2013 --split test --out reports/clip1
    python train_cli.py evaluate --checkpoint assets/emotion_cnn.pt --data ../shared/fer2013 --split test --frames
    python train_cli.py predict  face.jpg other.png [--checkpoint ...] [--json] [--explain OUT_DIR]
    python train_cli.py pack     --data ../shared/fer2013 --out .data/fer2013   # small lossless copy: --data .data/fer2013

Run `python train_cli.py COMMAND --help` for every flag. Multi-process training:
`torchrun --nproc_per_node=N train_cli.py train ...` (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time, so `--help` needs no torch
    from emotion.data.augment import AugmentConfig
    from emotion.models.networks import ModelConfig
    from emotion.training.config import TrainConfig

log = logging.getLogger("emotion.cli")
TTA_CHOICES = (
    "none",
    "flip",
    "shift",
)  # emotion.inference.classifier.TTA_VIEWS, named here so --help needs no torch import
ENGINE_CHOICES = ("auto", "torch", "onnxruntime")  # emotion.inference.classifier.ENGINES
SHIP_WEIGHTS = ("fp16", "int8")  # emotion.models.checkpoint.SHIP_WEIGHTS


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for flags whose default depends on the model (None) and switches."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from emotion.models.networks import ModelConfig
    from emotion.training.config import TrainConfig

    t, m, c = TrainConfig(), ModelConfig(), TrainConfig.for_model("cnn")
    aug = t.augment
    p = sub.add_parser(
        "train", help="train a model (CLIP + adapter by default, or the offline CNN)", formatter_class=_Help
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


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint: metrics table, metrics.json, confusion matrix and curves",
        formatter_class=_Help,
    )
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint file (default: the shipped offline CNN, assets/emotion_cnn.pt)"
    )
    p.add_argument("--data", default="../shared/fer2013", help="dataset folder or fer2013.csv")
    p.add_argument(
        "--split",
        default="test",
        help="split to evaluate: test, train, heldout (the faces of train the checkpoint's networks were trained "
        "without, given one shared --val-split: compare recipes without a test split) or (CSV) private",
    )
    p.add_argument(
        "--out", default=None, help="folder for metrics.json, confusion_matrix.png and curves.png (default: table only)"
    )
    p.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default=None,
        help="test-time augmentation: none, flip (face + mirror) or shift (10 shifted and mirrored views); default: the checkpoint's own setting",
    )
    p.add_argument("--batch-size", type=int, default=256, help="faces per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        default="auto",
        help="what runs the model: auto (the app's choice: the CNN on ONNX Runtime fp32 on a CPU without native bf16; on one with it, whichever of PyTorch bf16, PyTorch fp32 and ONNX Runtime fp32 times fastest on one face; PyTorch on a GPU), torch or onnxruntime",
    )
    p.add_argument(
        "--frames",
        action="store_true",
        help="frame benchmark: place each face in a 640x480 camera-like frame (seeded size, tilt, position, background, "
        "colour), run the real pipeline (detector, crop, model) and compare with the direct 48x48 crops; "
        "writes frames.json and frames.md to --out (default reports/frames-<split>)",
    )
    p.add_argument("--seed", type=int, default=0, help="with --frames: seed of every frame's draws")
    p.add_argument(
        "--video-detection",
        action="store_true",
        help="with --frames: detect faces as video does, one whole-frame pass without the small-face tiles that "
        "photos (Upload, predict) get and the Live tab scans in turn over a stream's frames",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="with --frames: only this many faces (a seeded random subset), for a quick run",
    )
    p.add_argument(
        "--draws",
        type=int,
        default=1,
        help="with --frames: frames per face, each drawn afresh (one draw reads the gap to about half a point; "
        "the report gives every draw's gap and their pooled figure; default 1)",
    )
    p.add_argument(
        "--face-model",
        default=None,
        help="with --frames: MediaPipe face detector .tflite (or env EMOTION_FACE_MODEL); default: cache, download, Haar fallback",
    )


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="emotion probabilities for every face in each image", formatter_class=_Help)
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, WebP, ...)")
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint file (default: $EMOTION_CHECKPOINT or the shipped offline CNN)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument(
        "--whole-image", action="store_true", help="skip face detection: classify each image as one face crop"
    )
    p.add_argument(
        "--face-model",
        default=None,
        help="MediaPipe face detector .tflite (or env EMOTION_FACE_MODEL); default: cache, download, Haar fallback",
    )
    p.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default=None,
        help="test-time augmentation: none, flip (face + mirror) or shift (10 shifted and mirrored views); default: the checkpoint's own setting",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--explain",
        default=None,
        metavar="OUT_DIR",
        help="also write one PNG per image into OUT_DIR (created if missing): boxes, labels and each face's "
        "Grad-CAM saliency (CNN models only); the printed output is unchanged",
    )


def _add_ship(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ship",
        help="release trained checkpoints as one file: no optimizer state, with its inference setting and evaluation",
        formatter_class=_Help,
    )
    p.add_argument(
        "checkpoints",
        nargs="+",
        help="trained checkpoint, e.g. runs/cnn/best.pt; several of one architecture make an ensemble",
    )
    p.add_argument("--out", default="assets/emotion_cnn.pt", help="released checkpoint file")
    p.add_argument(
        "--tta", choices=TTA_CHOICES, required=True, help="test-time augmentation the app, predict and the API will use"
    )
    p.add_argument(
        "--weights",
        choices=SHIP_WEIGHTS,
        default="fp16",
        help="how weight matrices are stored: fp16 (half the size of training's float32), or int8 with a scale per "
        "output channel (a quarter: more networks under a size budget, at a small cost in accuracy); "
        "either way the model runs in float32 or the CPU's bf16",
    )
    p.add_argument(
        "--data",
        default="../shared/fer2013",
        help="dataset whose --split is evaluated and recorded, with and without TTA",
    )
    p.add_argument("--split", default="test", help="split to evaluate")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (preprocessing included) and check parity with PyTorch",
        formatter_class=_Help,
    )
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the shipped offline CNN)")
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark the live pipeline, training throughput and memory on this machine",
        formatter_class=_Help,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes (seconds, for a smoke test); figures are not meaningful"
    )
    p.add_argument("--frames", type=int, default=None, help="timed repetitions per pipeline measurement")
    p.add_argument("--train-images", type=int, default=None, help="images per training-throughput measurement")
    p.add_argument("--models", default=None, help="comma-separated models to time: cnn,clip")
    p.add_argument("--checkpoint", default=None, help="CNN checkpoint to time (default: the shipped offline CNN)")
    p.add_argument("--face-model", default=None, help="MediaPipe face detector .tflite (or env EMOTION_FACE_MODEL)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _add_video(sub: argparse._SubParsersAction) -> None:
    from emotion.video.analysis import VideoConfig

    v = VideoConfig()
    p = sub.add_parser(
        "video",
        help="analyze a video file: annotated video, per-frame faces.csv, timeline.png and summary.json",
        formatter_class=_Help,
    )
    p.add_argument("input", help="video file (any format OpenCV reads: MP4, WebM, AVI, MOV, MKV, ...)")
    p.add_argument("--out", required=True, help="folder for annotated.mp4, faces.csv, timeline.png and summary.json")
    p.add_argument(
        "--every", type=int, default=v.every, help="analyze one frame in N; the frames between show the last labels"
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=v.max_side,
        help="shrink frames to this longer side for analysis and the annotated video; 0 = full size",
    )
    p.add_argument(
        "--smoothing",
        type=float,
        default=v.smoothing,
        help="weight of the newest frame in each face's moving average; 1 = raw per-frame probabilities of the whole model (below 1 each frame runs one network of an ensemble on one TTA view, in turn)",
    )
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint file (default: $EMOTION_CHECKPOINT or the shipped offline CNN)"
    )
    p.add_argument(
        "--face-model",
        default=None,
        help="MediaPipe face detector .tflite (or env EMOTION_FACE_MODEL); default: cache, download, Haar fallback",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 leaves the other core to decoding and encoding, which run alongside; 0 = one per core",
    )


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a temperature on held-out training faces so the probabilities mean what they say, "
        "and store it in the checkpoint",
        formatter_class=_Help,
    )
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint to calibrate; rewritten in place (atomically) unless --dry-run"
    )
    p.add_argument(
        "--data",
        default="../shared/fer2013",
        help="dataset whose TRAIN split provides the held-out faces (never the test split)",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=None,
        help="fraction of each class of train to fit on (default: the checkpoint's own "
        "--val-split when it was trained with one, so the faces are truly unseen; else 0.1)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the stratified held-out split (default: the checkpoint's split seed, --split-seed or --seed, "
        "with its own --val-split, else 0)",
    )
    p.add_argument("--dry-run", action="store_true", help="fit and report only; leave the checkpoint unchanged")
    p.add_argument(
        "--allow-seen",
        action="store_true",
        help="write the temperature even when the networks may have trained on "
        "the held-out faces (a checkpoint trained without --val-split); such a T tends to be too low for new faces",
    )
    p.add_argument(
        "--temperature-from",
        default=None,
        metavar="SIBLING",
        help="fit nothing: copy the temperature of SIBLING, a checkpoint of the same recipe and TTA calibrated on "
        "faces none of its networks saw, for a model whose networks trained on every face (the release)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--engine", choices=ENGINE_CHOICES, default="auto", help="inference engine, as for evaluate")


def _add_pack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack",
        help="pack dataset splits into small lossless files (<split>.npz) that load like the folders",
        formatter_class=_Help,
    )
    p.add_argument(
        "--data",
        default="../shared/fer2013",
        help="dataset to pack: folder with train/ and test/ class folders, or fer2013.csv",
    )
    p.add_argument(
        "--out",
        required=True,
        help="folder for <split>.npz; pass it as --data to train or evaluate, e.g. .data/fer2013",
    )
    p.add_argument("--splits", default="train,test", help="comma-separated splits to pack")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all sub-commands."""
    parser = argparse.ArgumentParser(
        prog="train_cli.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_train,
        _add_evaluate,
        _add_predict,
        _add_ship,
        _add_export,
        _add_bench,
        _add_video,
        _add_pack,
        _add_calibrate,
    ):
        add(sub)
    return parser


def cmd_train(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from emotion.evaluation.evaluate import evaluate_dataset, format_table
    from emotion.inference.classifier import EmotionClassifier
    from emotion.training.config import TrainConfig
    from emotion.training.loop import train
    from emotion.training.setup import load_train_val

    out = a.out or f"runs/{a.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = TrainConfig.for_model(
        a.model,
        data=a.data,
        out=out,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        clip_lr=a.clip_lr,
        weight_decay=a.weight_decay,
        warmup_epochs=a.warmup_epochs,
        label_smoothing=a.label_smoothing,
        ema_decay=a.ema_decay,
        unfreeze_epoch=a.unfreeze_epoch,
        unfreeze_blocks=a.unfreeze_blocks,
        embedding_cache=not a.no_embedding_cache,
        cache_flip=a.cache_flip,
        val_split=a.val_split,
        seed=a.seed,
        split_seed=a.split_seed,
        amp=a.amp,
        device=a.device,
        threads=a.threads,
        clip_weights=a.clip_weights,
        cache_dir=a.cache_dir,
        max_images=a.max_images,
        resume=a.resume,
        overwrite=a.overwrite,
        teacher=a.teacher,
        distill_weight=a.distill_weight,
        distill_temperature=a.distill_temperature,
        teacher_cache=a.teacher_cache,
        init_from=a.init_from,
        init_member=a.init_member,
    )
    try:
        widths = tuple(int(w) for w in a.cnn_widths.split(",")) if a.cnn_widths else None
    except ValueError:
        raise ValueError(
            f"--cnn-widths must be whole numbers separated by commas, e.g. 32,64,128,256; got {a.cnn_widths!r}"
        ) from None
    model_overrides = {
        "clip_model": a.clip_model,
        "pretrained": a.pretrained,
        "dropout": a.dropout,
        "cnn_widths": widths,
        "cnn_block": a.cnn_block,
    }
    cfg.model = replace(cfg.model, **{k: v for k, v in model_overrides.items() if v is not None})
    cfg.augment = replace(
        cfg.augment,
        mixup=a.mixup,
        cutmix=a.cutmix,
        mix_prob=a.mix_prob,
        frame_jitter=a.frame_jitter,
        surround=a.surround,
        detector_framing=a.detector_framing,
    )
    cfg.detector_framings = list(a.detector_framings)
    cfg.check()  # bad settings stop here, before a run folder is created
    result = train(cfg)
    if not a.no_report and int(os.environ.get("RANK", "0")) == 0:
        _, val = load_train_val(cfg)
        best = Path(out) / "best.pt"
        m = evaluate_dataset(
            EmotionClassifier.from_checkpoint(best, device=a.device), val, "validation", Path(out) / "report"
        )
        print(format_table(m))
        log.info("best checkpoint %s (epoch %d); report in %s", best, result["best_epoch"], Path(out) / "report")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from emotion.evaluation.evaluate import evaluate_checkpoint, format_table
    from emotion.inference.classifier import default_checkpoint

    if a.frames:
        return cmd_evaluate_frames(a)
    m = evaluate_checkpoint(
        a.checkpoint or default_checkpoint(),
        a.data,
        a.split,
        a.out,
        tta=a.tta,
        device=a.device,
        batch_size=a.batch_size,
        engine=a.engine,
    )
    print(f"model: {m['model']}  data: {m['data']}  tta: {m['tta']}")
    print(format_table(m))
    return 0


def cmd_evaluate_frames(a: argparse.Namespace) -> int:
    from emotion.evaluation import frames as frame_bench
    from emotion.evaluation.evaluate import load_eval_split
    from emotion.inference.classifier import EmotionClassifier, default_checkpoint
    from emotion.inference.faces import FaceDetector
    from emotion.inference.recognizer import Recognizer

    if a.limit is not None and a.limit < 1:
        raise ValueError(f"--limit must be at least 1 face, got {a.limit}")
    if not 1 <= a.draws <= 100:
        raise ValueError(f"--draws must be 1 to 100 frames per face, got {a.draws}")
    classifier = EmotionClassifier.from_checkpoint(
        a.checkpoint or default_checkpoint(), device=a.device, tta=a.tta, engine=a.engine
    )
    ds = load_eval_split(classifier, a.data, a.split)
    recognizer = Recognizer(classifier, FaceDetector(a.face_model))
    cfg = frame_bench.FrameBenchConfig(seed=a.seed, limit=a.limit, draws=a.draws, small_faces=not a.video_detection)
    report = frame_bench.run_frame_benchmark(recognizer, ds.images.numpy(), ds.labels.numpy(), cfg)
    out = frame_bench.write_frames_report(report, a.out or f"reports/frames-{a.split}")
    print(f"model: {report['model']}  tta: {report['tta']}  faces: {report['detector']}  data: {ds.source}")
    print(frame_bench.format_frames_table(report))
    print(f"written to {out}/frames.json and frames.md ({report['seconds']} s)")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from emotion.data.labels import CLASS_NAMES
    from emotion.inference.classifier import EmotionClassifier
    from emotion.inference.faces import FaceDetector
    from emotion.inference.recognizer import Recognizer, predict_files

    out_dir = None
    if a.explain is not None:  # a bad folder stops before any model is loaded
        from emotion.inference.explain import prepare_out_dir

        out_dir = prepare_out_dir(a.explain)
    classifier = EmotionClassifier.from_checkpoint(a.checkpoint, device=a.device, tta=a.tta)
    if out_dir is not None:
        from emotion.inference.explain import check_explainable

        check_explainable(classifier)  # CLIP: a clear error before the images are analyzed
    detector = None if a.whole_image else FaceDetector(a.face_model)
    results = predict_files(a.images, Recognizer(classifier, detector), whole_image=a.whole_image)
    if out_dir is not None:
        from emotion.inference.explain import write_explanations

        written = write_explanations(results, classifier, out_dir, whole_image=a.whole_image)
        log.info("wrote %d explained picture(s) to %s", len(written), out_dir)
    if a.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"model: {classifier.name}" + ("" if detector is None else f"  faces: {detector.source}"))
    print(f"{'image':<32}{'box':>22}  {'label':<10}" + "".join(f"{c[:7]:>8}" for c in CLASS_NAMES))
    for r in results:
        if "error" in r:
            print(f"{r['image']:<32}  error: {r['error']}")
        elif not r["faces"]:
            print(f"{r['image']:<32}  no face found (use --whole-image to classify the whole image)")
        for f in r.get("faces", []):
            probs = "".join(f"{f['probabilities'][c]:>8.3f}" for c in CLASS_NAMES)
            print(f"{r['image']:<32}{str(f['box']):>22}  {f['label']:<10}{probs}")
    return 0


def cmd_ship(a: argparse.Namespace) -> int:
    from emotion.evaluation.evaluate import evaluate_checkpoint
    from emotion.models.checkpoint import record_evaluation, ship_checkpoint

    out = Path(a.out)
    staged = out.with_name(f".{out.name}.shipping")  # the release replaces --out only once it is evaluated
    try:
        ship_checkpoint(a.checkpoints, staged, tta=a.tta, weights=a.weights)
        summary = {}
        for mode in dict.fromkeys(("none", a.tta)):  # without TTA, and with the one shipped; of the file as written
            m = evaluate_checkpoint(staged, a.data, a.split, tta=mode, device=a.device)
            summary[mode] = {k: m[k] for k in ("accuracy", "macro_f1", "weighted_f1", "n", "split")}
            print(f"{a.split} accuracy with tta {mode}: {m['accuracy'] * 100:.2f}% (macro F1 {m['macro_f1']:.4f})")
        record_evaluation(staged, summary)
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    print(
        f"wrote {out} (tta {a.tta}, {len(a.checkpoints)} network{'s' if len(a.checkpoints) > 1 else ''}, "
        f"{a.weights} weights, {out.stat().st_size / 1e6:.1f} MB)"
    )
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from emotion.inference.classifier import default_checkpoint
    from emotion.models.export import export_onnx

    result = export_onnx(str(a.checkpoint or default_checkpoint()), a.onnx, opset=a.opset)
    print(json.dumps(result, indent=2))
    return 0 if result.get("parity_ok") else 1


def cmd_bench(a: argparse.Namespace) -> int:
    from emotion.bench.report import format_report
    from emotion.bench.run import run_benchmark
    from emotion.bench.timing import BenchConfig

    cfg = BenchConfig.quick() if a.quick else BenchConfig()
    for key, value in (
        ("frames", a.frames),
        ("train_images", a.train_images),
        ("cnn_checkpoint", a.checkpoint),
        ("face_model", a.face_model),
        ("device", a.device),
    ):
        if value is not None:
            setattr(cfg, key, value)
    if a.models:
        cfg.models = tuple(m.strip() for m in a.models.split(","))
    result = run_benchmark(cfg)
    print(json.dumps(result, indent=2) if a.json else format_report(result))
    return 0


def cmd_video(a: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from emotion.inference.classifier import EmotionClassifier
    from emotion.inference.faces import FaceDetector
    from emotion.inference.recognizer import Recognizer
    from emotion.video.analysis import VideoConfig, VideoError, VideoJob

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    recognizer = Recognizer(
        EmotionClassifier.from_checkpoint(a.checkpoint, device=a.device), FaceDetector(a.face_model)
    )
    try:
        job = VideoJob(
            a.input, a.out, recognizer, VideoConfig(every=a.every, max_side=a.max_side, smoothing=a.smoothing)
        )
        with tqdm(total=job.info.frame_count or None, unit="frame", desc=Path(a.input).name, dynamic_ncols=True) as bar:
            for _ in job:
                bar.update()
    except (VideoError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    r = job.result
    print(f"{r.frames} frames ({r.analyzed_frames} analyzed) in {r.seconds:.1f} s: {r.fps:.1f} frames/s")
    for face in r.faces:
        print(
            f"face {face['face_id']}: {face['first_s']:.1f}-{face['last_s']:.1f} s, {face['frames']} frames, "
            f"mostly {face['dominant']} ({face['share'][face['dominant']]:.0%})"
        )
    print(f"wrote {r.annotated}, {r.csv}, {r.timeline}, {r.summary}")
    problem = r.problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from emotion.evaluation.evaluate import calibrate_checkpoint

    if a.temperature_from is not None:
        return _transfer_temperature(a)
    r = calibrate_checkpoint(
        a.checkpoint,
        a.data,
        holdout=a.holdout,
        seed=a.seed,
        device=a.device,
        engine=a.engine,
        write=not a.dry_run,
        allow_seen=a.allow_seen,
    )
    seen = (
        "unseen in training"
        if r["unseen_in_training"]
        else "possibly SEEN in training (the networks trained on all of train)"
    )
    print(
        f"held out: {r['faces']} train faces ({r['holdout']:g} of each class, seed {r['seed']}), {seen}; tta {r['tta']}; "
        f"accuracy {r['accuracy'] * 100:.2f}%"
    )
    print(
        f"temperature {r['temperature']:.4f}: NLL {r['nll_before']:.4f} -> {r['nll_after']:.4f}, "
        f"ECE ({r['bins']} bins) {r['ece_before']:.4f} -> {r['ece_after']:.4f}"
    )
    if r["written"]:
        print(f"wrote temperature {r['temperature']:.4f} into {a.checkpoint}")
    elif a.dry_run:
        print("dry run: checkpoint unchanged")
    else:
        print(
            "not written: the networks may have trained on these faces, where they are more accurate than on new ones, "
            "so this temperature would not hold for new faces; train with --val-split to calibrate on unseen faces, "
            "or pass --allow-seen to write it anyway"
        )
    return 0


def _transfer_temperature(a: argparse.Namespace) -> int:
    from emotion.models.temperature import transfer_temperature

    if a.holdout is not None or a.seed is not None or a.allow_seen:
        raise ValueError("--temperature-from fits nothing: leave out --holdout, --seed and --allow-seen")
    r = transfer_temperature(a.checkpoint, a.temperature_from, write=not a.dry_run)
    fitted = r["source_calibration"]
    print(
        f"temperature {r['temperature']:.4f} of {a.temperature_from}, fitted on {fitted.get('faces', '?')} train faces "
        f"none of its networks saw (ECE {fitted.get('ece_before', float('nan')):.4f} -> "
        f"{fitted.get('ece_after', float('nan')):.4f} there); tta {r['tta']}"
    )
    print(
        f"wrote temperature {r['temperature']:.4f} into {a.checkpoint}"
        if r["written"]
        else "dry run: checkpoint unchanged"
    )
    return 0


def cmd_pack(a: argparse.Namespace) -> int:
    from emotion.data.splits import pack_dataset

    splits = tuple(s.strip() for s in a.splits.split(",") if s.strip())
    if not splits:
        raise ValueError(f"--splits names no split: give e.g. train,test (got {a.splits!r})")
    for split, info in pack_dataset(a.data, a.out, splits).items():
        print(f"{split}: {info['faces']} faces from {info['source']} -> {info['path']} ({info['bytes'] / 1e6:.1f} MB)")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "ship": cmd_ship,
    "export": cmd_export,
    "bench": cmd_bench,
    "video": cmd_video,
    "pack": cmd_pack,
    "calibrate": cmd_calibrate,
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the sub-command; returns the exit code (2 with a message for bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    from emotion.data.dataset import DataError
    from emotion.models.checkpoint import CheckpointError, CheckpointWriteError
    from emotion.models.weights import WeightsError
    from emotion.training.loop import TrainingDiverged

    try:
        return COMMANDS[args.command](args)
    except (DataError, WeightsError, CheckpointError, FileNotFoundError, ValueError) as exc:
        return _fail(exc, 2)  # bad input: settings, data, checkpoint, an existing run folder
    except (TrainingDiverged, CheckpointWriteError) as exc:
        return _fail(exc, 1)  # the run itself failed; the last good checkpoint is kept
    except KeyboardInterrupt:
        # Ctrl-C, or a time budget's SIGINT (scripts/gpu_train.sh): checkpoints already written stay.
        return _fail(RuntimeError("interrupted; a training run continues from its last.pt with --resume"), 130)


def _fail(exc: BaseException, code: int) -> int:
    """Report ``exc`` as one line (no traceback) and return ``code``."""
    message = " ".join(str(exc).split())
    log.error("%s", message)
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("RANK", "0")) != 0:
        # A torchrun worker other than rank 0 has written everything it owns; skipping interpreter
        # finalization spares it gloo's C++ destructors, which now and then abort (SIGABRT) a finished worker.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
