"""The verbs that use a checkpoint: predict (with --explain), export, bench and video."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("emotion.cli")


def cmd_predict(args: argparse.Namespace) -> int:
    """`predict`: detect and classify the faces of each image; print a table (or JSON), write explanations."""
    from emotion.data.labels import CLASS_NAMES
    from emotion.inference.classifier import EmotionClassifier
    from emotion.inference.faces import FaceDetector
    from emotion.inference.recognizer import Recognizer, predict_files

    out_dir = None
    if args.explain is not None:  # a bad folder stops before any model is loaded
        from emotion.inference.explain import prepare_out_dir

        out_dir = prepare_out_dir(args.explain)
    classifier = EmotionClassifier.from_checkpoint(args.checkpoint, device=args.device, tta=args.tta)
    if out_dir is not None:
        from emotion.inference.explain import check_explainable

        check_explainable(classifier)  # CLIP: a clear error before the images are analyzed
    detector = None if args.whole_image else FaceDetector(args.face_model)
    results = predict_files(args.images, Recognizer(classifier, detector), whole_image=args.whole_image)
    if out_dir is not None:
        from emotion.inference.explain import write_explanations

        written = write_explanations(results, classifier, out_dir, whole_image=args.whole_image)
        log.info("wrote %d explained picture(s) to %s", len(written), out_dir)
    if args.json:
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


def cmd_export(args: argparse.Namespace) -> int:
    """`export`: write the ONNX file; exit 1 when it does not match PyTorch."""
    from emotion.inference.classifier import default_checkpoint
    from emotion.models.export import export_onnx

    result = export_onnx(str(args.checkpoint or default_checkpoint()), args.onnx, opset=args.opset)
    print(json.dumps(result, indent=2))
    return 0 if result.get("parity_ok") else 1


def cmd_bench(args: argparse.Namespace) -> int:
    """`bench`: run the benchmark and print its report (or JSON)."""
    from emotion.bench.report import format_report
    from emotion.bench.run import run_benchmark
    from emotion.bench.timing import BenchConfig

    cfg = BenchConfig.quick() if args.quick else BenchConfig()
    for key, value in (
        ("frames", args.frames),
        ("train_images", args.train_images),
        ("cnn_checkpoint", args.checkpoint),
        ("face_model", args.face_model),
        ("device", args.device),
    ):
        if value is not None:
            setattr(cfg, key, value)
    if args.models:
        cfg.models = tuple(m.strip() for m in args.models.split(","))
    result = run_benchmark(cfg)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    """`video`: analyse a video file with a progress bar; exit 2 when it could not be read or written."""
    import torch
    from tqdm import tqdm

    from emotion.inference.classifier import EmotionClassifier
    from emotion.inference.faces import FaceDetector
    from emotion.inference.recognizer import Recognizer
    from emotion.video.analysis import VideoConfig, VideoError, VideoJob

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    recognizer = Recognizer(
        EmotionClassifier.from_checkpoint(args.checkpoint, device=args.device), FaceDetector(args.face_model)
    )
    try:
        job = VideoJob(
            args.input,
            args.out,
            recognizer,
            VideoConfig(every=args.every, max_side=args.max_side, smoothing=args.smoothing),
        )
        with tqdm(
            total=job.info.frame_count or None, unit="frame", desc=Path(args.input).name, dynamic_ncols=True
        ) as bar:
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
