"""The verbs that make and judge checkpoints: train, evaluate (crops and frames), ship, calibrate and pack."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("emotion.cli")


def cmd_train(args: argparse.Namespace) -> int:
    """`train`: build the config from the flags, train, and report best.pt on the validation faces."""
    from dataclasses import replace

    from emotion.evaluation.evaluate import evaluate_dataset, format_table
    from emotion.inference.classifier import EmotionClassifier
    from emotion.training.config import TrainConfig
    from emotion.training.loop import train
    from emotion.training.setup import load_train_val

    out = args.out or f"runs/{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = TrainConfig.for_model(
        args.model,
        data=args.data,
        out=out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        clip_lr=args.clip_lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        ema_decay=args.ema_decay,
        unfreeze_epoch=args.unfreeze_epoch,
        unfreeze_blocks=args.unfreeze_blocks,
        embedding_cache=not args.no_embedding_cache,
        cache_flip=args.cache_flip,
        val_split=args.val_split,
        seed=args.seed,
        split_seed=args.split_seed,
        amp=args.amp,
        device=args.device,
        threads=args.threads,
        clip_weights=args.clip_weights,
        cache_dir=args.cache_dir,
        max_images=args.max_images,
        resume=args.resume,
        overwrite=args.overwrite,
        teacher=args.teacher,
        distill_weight=args.distill_weight,
        distill_temperature=args.distill_temperature,
        teacher_cache=args.teacher_cache,
        init_from=args.init_from,
        init_member=args.init_member,
    )
    try:
        widths = tuple(int(w) for w in args.cnn_widths.split(",")) if args.cnn_widths else None
    except ValueError:
        raise ValueError(
            f"--cnn-widths must be whole numbers separated by commas, e.g. 32,64,128,256; got {args.cnn_widths!r}"
        ) from None
    model_overrides = {
        "clip_model": args.clip_model,
        "pretrained": args.pretrained,
        "dropout": args.dropout,
        "cnn_widths": widths,
        "cnn_block": args.cnn_block,
    }
    cfg.model = replace(cfg.model, **{k: v for k, v in model_overrides.items() if v is not None})
    cfg.augment = replace(
        cfg.augment,
        mixup=args.mixup,
        cutmix=args.cutmix,
        mix_prob=args.mix_prob,
        frame_jitter=args.frame_jitter,
        surround=args.surround,
        detector_framing=args.detector_framing,
    )
    cfg.detector_framings = list(args.detector_framings)
    cfg.check()  # bad settings stop here, before a run folder is created
    result = train(cfg)
    if not args.no_report and int(os.environ.get("RANK", "0")) == 0:
        _, val = load_train_val(cfg)
        best = Path(out) / "best.pt"
        m = evaluate_dataset(
            EmotionClassifier.from_checkpoint(best, device=args.device), val, "validation", Path(out) / "report"
        )
        print(format_table(m))
        log.info("best checkpoint %s (epoch %d); report in %s", best, result["best_epoch"], Path(out) / "report")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`evaluate`: metrics table of a checkpoint on a split (or the frame benchmark with --frames)."""
    from emotion.evaluation.evaluate import evaluate_checkpoint, format_table
    from emotion.inference.classifier import default_checkpoint

    if args.frames:
        return cmd_evaluate_frames(args)
    m = evaluate_checkpoint(
        args.checkpoint or default_checkpoint(),
        args.data,
        args.split,
        args.out,
        tta=args.tta,
        device=args.device,
        batch_size=args.batch_size,
        engine=args.engine,
    )
    print(f"model: {m['model']}  data: {m['data']}  tta: {m['tta']}")
    print(format_table(m))
    return 0


def cmd_evaluate_frames(args: argparse.Namespace) -> int:
    """`evaluate --frames`: the split's faces in seeded camera-like frames through the real pipeline."""
    from emotion.evaluation import frames as frame_bench
    from emotion.evaluation.evaluate import load_eval_split
    from emotion.inference.classifier import EmotionClassifier, default_checkpoint
    from emotion.inference.faces import FaceDetector
    from emotion.inference.recognizer import Recognizer

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1 face, got {args.limit}")
    if not 1 <= args.draws <= 100:
        raise ValueError(f"--draws must be 1 to 100 frames per face, got {args.draws}")
    classifier = EmotionClassifier.from_checkpoint(
        args.checkpoint or default_checkpoint(), device=args.device, tta=args.tta, engine=args.engine
    )
    ds = load_eval_split(classifier, args.data, args.split)
    recognizer = Recognizer(classifier, FaceDetector(args.face_model))
    cfg = frame_bench.FrameBenchConfig(
        seed=args.seed, limit=args.limit, draws=args.draws, small_faces=not args.video_detection
    )
    report = frame_bench.run_frame_benchmark(recognizer, ds.images.numpy(), ds.labels.numpy(), cfg)
    out = frame_bench.write_frames_report(report, args.out or f"reports/frames-{args.split}")
    print(f"model: {report['model']}  tta: {report['tta']}  faces: {report['detector']}  data: {ds.source}")
    print(frame_bench.format_frames_table(report))
    print(f"written to {out}/frames.json and frames.md ({report['seconds']} s)")
    return 0


def cmd_ship(args: argparse.Namespace) -> int:
    """`ship`: write the release file, evaluate it without TTA and with the shipped one, record both."""
    from emotion.evaluation.evaluate import evaluate_checkpoint
    from emotion.models.checkpoint import record_evaluation, ship_checkpoint

    out = Path(args.out)
    staged = out.with_name(f".{out.name}.shipping")  # the release replaces --out only once it is evaluated
    try:
        ship_checkpoint(args.checkpoints, staged, tta=args.tta, weights=args.weights)
        summary = {}
        for mode in dict.fromkeys(("none", args.tta)):  # without TTA, and with the one shipped; of the file as written
            m = evaluate_checkpoint(staged, args.data, args.split, tta=mode, device=args.device)
            summary[mode] = {k: m[k] for k in ("accuracy", "macro_f1", "weighted_f1", "n", "split")}
            print(f"{args.split} accuracy with tta {mode}: {m['accuracy'] * 100:.2f}% (macro F1 {m['macro_f1']:.4f})")
        record_evaluation(staged, summary)
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    print(
        f"wrote {out} (tta {args.tta}, {len(args.checkpoints)} network{'s' if len(args.checkpoints) > 1 else ''}, "
        f"{args.weights} weights, {out.stat().st_size / 1e6:.1f} MB)"
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """`calibrate`: fit the temperature on held-out train faces and write it (unless they may have been seen)."""
    from emotion.evaluation.evaluate import calibrate_checkpoint

    if args.temperature_from is not None:
        return _transfer_temperature(args)
    r = calibrate_checkpoint(
        args.checkpoint,
        args.data,
        holdout=args.holdout,
        seed=args.seed,
        device=args.device,
        engine=args.engine,
        write=not args.dry_run,
        allow_seen=args.allow_seen,
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
        print(f"wrote temperature {r['temperature']:.4f} into {args.checkpoint}")
    elif args.dry_run:
        print("dry run: checkpoint unchanged")
    else:
        print(
            "not written: the networks may have trained on these faces, where they are more accurate than on new ones, "
            "so this temperature would not hold for new faces; train with --val-split to calibrate on unseen faces, "
            "or pass --allow-seen to write it anyway"
        )
    return 0


def _transfer_temperature(args: argparse.Namespace) -> int:
    """`calibrate --temperature-from`: copy a sibling checkpoint's fitted temperature."""
    from emotion.models.temperature import transfer_temperature

    if args.holdout is not None or args.seed is not None or args.allow_seen:
        raise ValueError("--temperature-from fits nothing: leave out --holdout, --seed and --allow-seen")
    r = transfer_temperature(args.checkpoint, args.temperature_from, write=not args.dry_run)
    fitted = r["source_calibration"]
    print(
        f"temperature {r['temperature']:.4f} of {args.temperature_from}, fitted on {fitted.get('faces', '?')} train faces "
        f"none of its networks saw (ECE {fitted.get('ece_before', float('nan')):.4f} -> "
        f"{fitted.get('ece_after', float('nan')):.4f} there); tta {r['tta']}"
    )
    print(
        f"wrote temperature {r['temperature']:.4f} into {args.checkpoint}"
        if r["written"]
        else "dry run: checkpoint unchanged"
    )
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    """`pack`: write the packed splits and print their sizes."""
    from emotion.data.splits import pack_dataset

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    if not splits:
        raise ValueError(f"--splits names no split: give e.g. train,test (got {args.splits!r})")
    for split, info in pack_dataset(args.data, args.out, splits).items():
        print(f"{split}: {info['faces']} faces from {info['source']} -> {info['path']} ({info['bytes'] / 1e6:.1f} MB)")
    return 0
