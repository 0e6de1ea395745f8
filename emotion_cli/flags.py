"""The command line's flags for every verb but ``train`` (argparse lives here and in ``train_flags``, never in
``emotion/``). The library's choices are named here rather than imported, so these flags need no torch
(``train``'s do: their defaults come from the library's configs); tests check that the two lists agree."""

from __future__ import annotations

import argparse

TTA_CHOICES = ("none", "flip", "shift")  # emotion.inference.classifier.TTA_VIEWS
ENGINE_CHOICES = ("auto", "torch", "onnxruntime")  # emotion.inference.classifier.ENGINES
SHIP_WEIGHTS = ("fp16", "int8")  # emotion.models.checkpoint.SHIP_WEIGHTS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for flags whose default depends on the model (None) and switches."""

    def _get_help_string(self, action: argparse.Action) -> str:
        """The flag's help, with its default appended unless it has none worth showing."""
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    """Sub-command `evaluate`: metrics of a checkpoint on a split, or (--frames) on its faces in camera-like frames."""
    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint: metrics table, metrics.json, confusion matrix and curves",
        formatter_class=HelpFormatter,
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


def add_predict(sub: argparse._SubParsersAction) -> None:
    """Sub-command `predict`: faces and labels of image files, as a table or JSON, with optional saliency pictures."""
    p = sub.add_parser(
        "predict", help="emotion probabilities for every face in each image", formatter_class=HelpFormatter
    )
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


def add_ship(sub: argparse._SubParsersAction) -> None:
    """Sub-command `ship`: one release file from trained checkpoints, evaluated before it replaces --out."""
    p = sub.add_parser(
        "ship",
        help="release trained checkpoints as one file: no optimizer state, with its inference setting and evaluation",
        formatter_class=HelpFormatter,
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


def add_export(sub: argparse._SubParsersAction) -> None:
    """Sub-command `export`: the CNN as an ONNX file, checked against PyTorch."""
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (preprocessing included) and check parity with PyTorch",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the shipped offline CNN)")
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")


def add_bench(sub: argparse._SubParsersAction) -> None:
    """Sub-command `bench`: latency, throughput and memory of the detector, the pipeline and training."""
    p = sub.add_parser(
        "bench",
        help="benchmark the live pipeline, training throughput and memory on this machine",
        formatter_class=HelpFormatter,
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


def add_video(sub: argparse._SubParsersAction) -> None:
    """Sub-command `video`: a video file annotated, with per-frame CSV, timeline and summary."""
    from emotion.video.analysis import VideoConfig

    v = VideoConfig()
    p = sub.add_parser(
        "video",
        help="analyze a video file: annotated video, per-frame faces.csv, timeline.png and summary.json",
        formatter_class=HelpFormatter,
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


def add_calibrate(sub: argparse._SubParsersAction) -> None:
    """Sub-command `calibrate`: fit (or borrow) the temperature of a checkpoint on train faces it held out."""
    p = sub.add_parser(
        "calibrate",
        help="fit a temperature on held-out training faces so the probabilities mean what they say, "
        "and store it in the checkpoint",
        formatter_class=HelpFormatter,
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


def add_pack(sub: argparse._SubParsersAction) -> None:
    """Sub-command `pack`: a small lossless copy of the dataset that loads in seconds."""
    p = sub.add_parser(
        "pack",
        help="pack dataset splits into small lossless files (<split>.npz) that load like the folders",
        formatter_class=HelpFormatter,
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
