"""Speed benchmark: the live pipeline per stage, forward-pass variants, training throughput and memory.

``run_benchmark(BenchConfig())`` returns one JSON-ready dict (the layout is in ``run_benchmark``'s
docstring), its targets judged by ``emotion.bench.report``, whose ``format_report`` renders it as tables. CLIP is
timed with random weights: speed does not depend on the weights' values. Figures are wall-clock
medians and 90th percentiles on whatever else the machine is doing; ``machine.load_avg_1m`` says
how busy it was.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..inference.classifier import EmotionClassifier, default_checkpoint
from ..models.checkpoint import save_checkpoint
from ..models.networks import ModelConfig, build_model
from ..utils.runtime import autocast_for, cpu_cores, pick_device
from .pipeline import compose_frames, explain_timings, memory_in_fresh_process, time_pipeline
from .report import evaluate_targets
from .timing import REPO, SHARED_FER, BenchConfig, machine_info, time_ms
from .training import training_throughput

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- models under test


def _cnn_checkpoint(cfg: BenchConfig, tmp: Path) -> Path:
    if cfg.cnn_checkpoint:
        return Path(cfg.cnn_checkpoint)
    if default_checkpoint().is_file():
        return default_checkpoint()
    log.warning(
        "no trained CNN at %s: timing an untrained one (speed does not depend on the weights)", default_checkpoint()
    )
    return _save_untrained(
        ModelConfig(kind="cnn", cnn_widths=(32, 64, 128, 256), cnn_convs=2), tmp / "cnn_untrained.pt"
    )


def _save_untrained(model_cfg: ModelConfig, path: Path) -> Path:
    torch.manual_seed(0)
    model, _ = build_model(model_cfg, clip_weights="random")
    save_checkpoint(path, model, model_cfg, metrics={"note": "untrained, for benchmarking"})
    return path


def _checkpoints(cfg: BenchConfig, tmp: Path) -> dict[str, Path]:
    """A checkpoint per model, so everything is timed through the app's own loading path."""
    out = {}
    for name in cfg.models:
        if name == "cnn":
            out[name] = _cnn_checkpoint(cfg, tmp)
        elif name == "clip":
            out[name] = _save_untrained(ModelConfig(kind="clip", clip_model=cfg.clip_model), tmp / "clip_random.pt")
        else:
            raise ValueError(f"unknown model '{name}' to benchmark: expected cnn or clip")
    return out


# ---------------------------------------------------------------- forward-pass variants


def _forward_variants(clf: EmotionClassifier, cfg: BenchConfig) -> dict:
    """Raw forward (preprocess + model, input already on the device) per precision, layout and thread count."""
    device, loaded = clf.device, clf.loaded
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    is_cnn = loaded.config.kind == "cnn"
    # name: (model, autocast dtype, channels-last input, intra-op threads; 0 = torch's default)
    variants: dict[str, tuple[torch.nn.Module, torch.dtype | None, bool, int]] = {
        "fp32": (loaded.model, None, is_cnn, 0),
        "bf16": (loaded.model, torch.bfloat16, is_cnn, 0),
    }
    if device.type == "cuda":
        variants["fp16"] = (loaded.model, torch.float16, is_cnn, 0)
    else:
        # On a busy CPU, a second intra-op thread waits at every barrier for a core it may not get.
        variants["fp32_1_thread"] = (loaded.model, None, is_cnn, 1)
    if is_cnn:
        # The app runs the CNN channels-last (predict.py); this is the alternative it chose against.
        variants["fp32_contiguous"] = (
            copy.deepcopy(loaded.model).to(memory_format=torch.contiguous_format),
            None,
            False,
            0,
        )
    if is_cnn and cfg.compile:
        t0 = time.perf_counter()
        compiled = torch.compile(copy.deepcopy(loaded.model))
        with torch.inference_mode():
            for n in (1, 4):  # one compilation per batch size; not part of the timing
                compiled(
                    loaded.preprocess(torch.rand(n, 1, 48, 48, device=device)).contiguous(
                        memory_format=torch.channels_last
                    )
                )
        compile_s = round(time.perf_counter() - t0, 1)
        log.info("torch.compile of the CNN took %.1fs", compile_s)
        variants["fp32_compiled"] = (compiled, None, True, 0)
    out: dict[str, dict] = {}
    default_threads = torch.get_num_threads()
    for name, (model, dtype, channels_last, threads) in variants.items():
        out[name] = {}
        torch.set_num_threads(threads or default_threads)
        try:
            for n in (1, 4):
                x = torch.rand(n, 1, 48, 48, device=device)

                @torch.inference_mode()
                def step(model=model, dtype=dtype, channels_last=channels_last, x=x) -> torch.Tensor:
                    y = loaded.preprocess(x)
                    if channels_last:
                        y = y.contiguous(memory_format=torch.channels_last)
                    with autocast_for(device, dtype):
                        return model(y)

                out[name][f"{n}_face"] = time_ms(step, cfg, sync)
        finally:
            torch.set_num_threads(default_threads)
    if "fp32_compiled" in out:
        out["fp32_compiled"]["compile_seconds"] = compile_s
    return out


def _onnx_forward(name: str, checkpoint: Path, clf: EmotionClassifier, cfg: BenchConfig, tmp: Path) -> dict:
    """ONNX Runtime vs PyTorch, both through their classifier's ``predict_tensor`` (uint8 faces in, probabilities out)."""
    from ..models.export import OnnxClassifier, export_onnx

    info = export_onnx(checkpoint, tmp / f"{name}.onnx")
    ort_clf, ort_1_thread = OnnxClassifier(info["path"]), OnnxClassifier(info["path"], threads=1)
    if clf.engine != "torch":  # the comparison is against PyTorch, whichever engine the app picked here
        clf = EmotionClassifier(clf.loaded, clf.device, cfg.amp, clf.tta, engine="torch")
    out = {
        "export_seconds": info["export_seconds"],
        "max_abs_diff": info["max_abs_diff"],
        "parity_ok": info["parity_ok"],
        "file_mb": round(info["bytes"] / 2**20, 1),
    }
    for n in (1, 4):
        faces = torch.randint(0, 256, (n, 48, 48), dtype=torch.uint8)
        out[f"{n}_face"] = {
            "torch_ms": time_ms(lambda faces=faces: clf.predict_tensor(faces), cfg),
            "onnxruntime_ms": time_ms(lambda faces=faces: ort_clf.predict_tensor(faces), cfg),
            "onnxruntime_1_thread_ms": time_ms(lambda faces=faces: ort_1_thread.predict_tensor(faces), cfg),
        }
    Path(info["path"]).unlink()  # a ViT-B/32 export is ~350 MB; the benchmark only needed its timing
    return out


# ---------------------------------------------------------------- the benchmark


def _face_model(cfg: BenchConfig) -> str | None:
    """cfg.face_model, else the copy in ../shared, else None (emotion.inference.faces resolves it: env, cache, download)."""
    if cfg.face_model:
        return cfg.face_model
    shared = REPO.parent / "shared" / "models" / "face_detection_short_range.tflite"
    return str(shared) if shared.is_file() else None


def _bench_model(
    name: str,
    checkpoint: Path,
    detector,
    face_model: str | None,
    frames: dict[int, np.ndarray],
    cfg: BenchConfig,
    tmp: Path,
    result: dict,
) -> None:
    """Every measurement of one model, written into ``result``."""
    from ..inference.recognizer import Recognizer

    t0 = time.perf_counter()
    clf = EmotionClassifier.from_checkpoint(checkpoint, device=cfg.device, amp=cfg.amp)
    recognizer = Recognizer(clf, detector)
    default_threads = torch.get_num_threads()
    # The app's setting (every core by default), then 1 thread: what is left to it while other work holds the cores;
    # for an ensemble also every network on every frame, which the live view's rotation avoids.
    runs = [("pipeline", cfg.threads or cpu_cores(), True), ("pipeline_1_thread", 1, True)]
    if clf.members > 1:
        runs.append(("pipeline_all_networks", cfg.threads or cpu_cores(), False))
    for key, threads, rotate in runs:
        torch.set_num_threads(threads)
        try:
            pipe = {f"{n}_face": time_pipeline(recognizer, frame, cfg, rotate) for n, frame in frames.items()}
        finally:
            torch.set_num_threads(default_threads)
        pipe |= {
            "threads": threads,
            "model": clf.name,
            "autocast": str(clf.dtype).replace("torch.", "") if clf.dtype else "off (fp32)",
        }
        result[key][name] = pipe
    pipe = result["pipeline"][name]
    one, four = pipe["1_face"], pipe["4_face"]
    result["ratios"][name] = {
        "total_over_forward_1_face": round(one["total_ms"]["median"] / one["forward_ms"]["median"], 2),
        "total_over_forward_4_face": round(four["total_ms"]["median"] / four["forward_ms"]["median"], 2),
        "four_vs_one_face": round(four["total_ms"]["median"] / one["total_ms"]["median"], 2),
    }
    if name == "cnn" and cfg.video_frames:
        from ..video.analysis import benchmark_fps

        torch.set_num_threads(1)  # as `train_cli.py video` runs by default: the other core decodes and encodes
        try:
            result["video"] = benchmark_fps(recognizer, frames[1], frames=cfg.video_frames)
        finally:
            torch.set_num_threads(default_threads)
    if clf.loaded.config.kind == "cnn":  # Grad-CAM needs convolutional stages: CLIP has none
        result["explain"][name] = explain_timings(recognizer, frames, cfg)
    result["forward"][name] = _forward_variants(clf, cfg)
    if cfg.onnx:
        result["onnx"][name] = _onnx_forward(name, checkpoint, clf, cfg, tmp)
    log.info("%s: inference timings took %.0fs", name, time.perf_counter() - t0)
    del clf, recognizer  # a ViT-B/32 is 350 MB: free it before training another copy
    if cfg.training:
        t0 = time.perf_counter()
        result["training"][name] = training_throughput(
            name, checkpoint, tmp, train_images=cfg.train_images, device=cfg.device, amp=cfg.amp
        )
        log.info("%s: training throughput took %.0fs", name, time.perf_counter() - t0)
    if cfg.memory:
        mem = memory_in_fresh_process(checkpoint, face_model, frames[1], cfg, tmp)
        result["memory"] |= {f"{name}_app_rss_mb": mem["peak_rss_mb"], f"{name}_app_rss_now_mb": mem["rss_mb"]}
        if "gpu_peak_mb" in mem:
            result["memory"][f"{name}_app_gpu_peak_mb"] = mem["gpu_peak_mb"]


def _detectors(detector, frames: dict[int, np.ndarray], cfg: BenchConfig) -> dict:
    """Each face detector alone on the 640x480 frames: BlazeFace (when its model was found) and the Haar fallback."""
    from ..inference.faces import FaceDetector

    detectors = {"haar": FaceDetector(backend="haar")}
    if detector.backend == "mediapipe":
        detectors["blazeface"] = detector
    out = {}
    for name, det in detectors.items():
        out[name] = {
            "ms": time_ms(lambda det=det: det.detect(frames[1]), cfg),
            "ms_4_face": time_ms(lambda det=det: det.detect(frames[4]), cfg),
            "faces_found": {f"{n}_face": len(det.detect(frame)) for n, frame in frames.items()},
        }
        if name == "blazeface":  # photos also get the small-face pass over four tiles (Haar has none)
            out[name]["ms_small_faces"] = time_ms(lambda det=det: det.detect(frames[1], small_faces=True), cfg)
    return out


def run_benchmark(cfg: BenchConfig) -> dict:
    """Run every measurement ``cfg`` asks for; returns a JSON-ready dict.

    Keys: ``machine``; ``detector.<blazeface|haar>`` with ``ms.{median,p90,min}`` on the 1-face frame,
    ``ms_4_face``, ``faces_found`` and (blazeface) ``ms_small_faces``, the photo path's (blazeface only when its model
    is found);
    ``pipeline.<model>.<n>_face`` (n = 1, 4) with ``faces_detected`` and ``<stage>_ms.{median,p90,min}``
    for the stages detect, crop, forward, smooth, overlay and total, at the default thread setting
    (``pipeline.<model>.threads``), and the same at 1 thread in ``pipeline_1_thread`` and, for an ensemble, with every network on every frame in ``pipeline_all_networks``; ``ratios.<model>``; ``forward.<model>.<variant>.<n>_face`` (fp32, bf16, fp32_1_thread on CPU,
    fp16 on CUDA, fp32_contiguous and fp32_compiled for the CNN); ``onnx.<model>``;
    ``training.<model>.<phase>`` with ``images_per_s`` (CNN: full; CLIP: frozen_cached,
    frozen_uncached, unfrozen, plus the frozen_phase projection); ``memory.<model>_app_rss_mb``
    (peak RSS of a fresh app process); ``video`` (``fps`` of ``train_cli.py video`` end to end on a 640x480
    one-face clip, CNN, 1 thread); ``explain.<model>.<n>_face`` (a photo's analysis + overlay without and with
    Grad-CAM, ``plain_ms``/``explained_ms`` and ``explain_ms_per_face``; CNNs only); ``targets`` (one entry per target, with ``pass``).
    """
    from ..inference.faces import FaceDetector

    device = pick_device(cfg.device)
    result: dict = {
        "machine": machine_info(device),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "detector": {},
        "pipeline": {},
        "pipeline_1_thread": {},
        "pipeline_all_networks": {},
        "ratios": {},
        "forward": {},
        "onnx": {},
        "explain": {},
        "training": {},
        "memory": {},
        "video": {},
    }
    face_model = _face_model(cfg)
    detector = FaceDetector(face_model, allow_download=False)
    result["machine"]["face_detector"] = detector.source
    frames = compose_frames(detector, Path(cfg.fer_dir) if cfg.fer_dir else SHARED_FER)
    result["detector"] = _detectors(detector, frames, cfg)
    with tempfile.TemporaryDirectory(prefix="emotion-bench-") as tmp:
        for name, checkpoint in _checkpoints(cfg, Path(tmp)).items():
            log.info("benchmarking %s (%s)", name, checkpoint)
            _bench_model(name, checkpoint, detector, face_model, frames, cfg, Path(tmp), result)
    result["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    result["targets"] = evaluate_targets(result)
    return result
