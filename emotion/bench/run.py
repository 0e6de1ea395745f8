"""Speed benchmark: the live pipeline per stage, forward-pass variants, training throughput and memory.

``run_benchmark(BenchConfig())`` returns one JSON-ready dict (the layout is in ``run_benchmark``'s
docstring), its targets judged by ``emotion.bench.report``, whose ``format_report`` renders it as tables. CLIP is
timed with random weights: speed does not depend on the weights' values. Figures are wall-clock
medians and 90th percentiles on whatever else the machine is doing; ``machine.load_avg_1m`` says
how busy it was.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from .report import evaluate_targets
from .training import training_throughput
from ..models.checkpoint import save_checkpoint
from ..models.networks import ModelConfig, build_model
from ..inference.classifier import EmotionClassifier, default_checkpoint
from ..utils.runtime import autocast_for, cpu_cores, cpu_has_native_bf16, pick_device

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SHARED_FER = REPO.parent / "shared" / "fer2013"
FRAME_SIZE = (480, 640)  # (height, width) of the synthetic camera frame


@dataclass
class BenchConfig:
    """What to benchmark and how long; the defaults take a few minutes on a 2-core CPU."""

    frames: int = 50  # timed repetitions of each measurement (pipeline frames, forward passes)
    warmup: int = 5  # untimed repetitions first: oneDNN primitive caches, allocator and lazy initialisation
    video_frames: int = 300  # frames of the synthetic 640x480 one-face clip timed end to end by video analysis (0 = skip)
    train_images: int = 512  # training images per throughput measurement (plus a quarter as many for validation, FER2013's ratio)
    models: tuple[str, ...] = ("cnn", "clip")  # models to time: the offline CNN and/or CLIP
    cnn_checkpoint: str | None = None  # None: predict.default_checkpoint() if it exists, else an untrained default CNN
    clip_model: str = "ViT-B-32"  # open_clip architecture, timed with random weights
    face_model: str | None = None  # BlazeFace .tflite; None resolves as emotion.inference.faces does (../shared copy first)
    fer_dir: str | None = None  # FER2013 folder whose test/ faces compose the frames; None: ../shared/fer2013 beside the repo
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    amp: str = "auto"  # the app's autocast setting: fp32 on CPUs without native bf16 (see runtime.amp_dtype)
    memory: bool = True  # measure the app's peak RSS with each model in a fresh subprocess
    training: bool = True  # measure training throughput with the real trainer
    onnx: bool = True  # export each model to ONNX and time ONNX Runtime against PyTorch
    compile: bool = False  # also time torch.compile on the CNN (compiling costs about a minute on a small CPU)
    threads: int = 0  # torch threads for the pipeline; 0 = every core, as the app uses (AppConfig.threads); it is also timed on 1 thread

    @classmethod
    def quick(cls) -> BenchConfig:
        """Tiny sizes that exercise every code path in seconds; the figures mean nothing."""
        return cls(frames=2, warmup=1, train_images=64, video_frames=10, clip_model="emotion-tiny-vit")


def _summary(samples_ms: list[float]) -> dict:
    # The minimum is what the hardware can do; median and p90 include what other processes take from it.
    a = np.asarray(samples_ms, dtype=np.float64)
    return {f: round(float(v), 4) for f, v in (("median", np.median(a)), ("p90", np.percentile(a, 90)), ("min", a.min()))} | {"n": len(a)}


def _time_ms(fn: Callable[[], object], cfg: BenchConfig, sync: Callable[[], None] = lambda: None) -> dict:
    """Median and p90 wall time of ``fn`` over ``cfg.frames`` calls after ``cfg.warmup`` untimed ones."""
    samples = []
    for i in range(cfg.warmup + cfg.frames):
        t0 = time.perf_counter()
        fn()
        sync()
        if i >= cfg.warmup:
            samples.append((time.perf_counter() - t0) * 1000)
    return _summary(samples)


def _proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmHWM = peak RSS, VmRSS = current) in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # no /proc (macOS): only the peak is available

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info(device: torch.device) -> dict:
    """CPU, cores, library versions and how busy the machine is, so figures can be put in context."""
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "native_bf16": cpu_has_native_bf16(), "device": str(device), "load_avg_1m": round(os.getloadavg()[0], 2)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------- models under test

def _cnn_checkpoint(cfg: BenchConfig, tmp: Path) -> Path:
    if cfg.cnn_checkpoint:
        return Path(cfg.cnn_checkpoint)
    if default_checkpoint().is_file():
        return default_checkpoint()
    log.warning("no trained CNN at %s: timing an untrained one (speed does not depend on the weights)", default_checkpoint())
    return _save_untrained(ModelConfig(kind="cnn", cnn_widths=(32, 64, 128, 256), cnn_convs=2), tmp / "cnn_untrained.pt")


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
        "fp32": (loaded.model, None, is_cnn, 0), "bf16": (loaded.model, torch.bfloat16, is_cnn, 0)}
    if device.type == "cuda":
        variants["fp16"] = (loaded.model, torch.float16, is_cnn, 0)
    else:
        # On a busy CPU, a second intra-op thread waits at every barrier for a core it may not get.
        variants["fp32_1_thread"] = (loaded.model, None, is_cnn, 1)
    if is_cnn:
        # The app runs the CNN channels-last (predict.py); this is the alternative it chose against.
        variants["fp32_contiguous"] = (copy.deepcopy(loaded.model).to(memory_format=torch.contiguous_format), None, False, 0)
    if is_cnn and cfg.compile:
        t0 = time.perf_counter()
        compiled = torch.compile(copy.deepcopy(loaded.model))
        with torch.inference_mode():
            for n in (1, 4):  # one compilation per batch size; not part of the timing
                compiled(loaded.preprocess(torch.rand(n, 1, 48, 48, device=device)).contiguous(memory_format=torch.channels_last))
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

                out[name][f"{n}_face"] = _time_ms(step, cfg, sync)
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
    out = {"export_seconds": info["export_seconds"], "max_abs_diff": info["max_abs_diff"], "parity_ok": info["parity_ok"],
           "file_mb": round(info["bytes"] / 2**20, 1)}
    for n in (1, 4):
        faces = torch.randint(0, 256, (n, 48, 48), dtype=torch.uint8)
        out[f"{n}_face"] = {"torch_ms": _time_ms(lambda: clf.predict_tensor(faces), cfg),
                            "onnxruntime_ms": _time_ms(lambda: ort_clf.predict_tensor(faces), cfg),
                            "onnxruntime_1_thread_ms": _time_ms(lambda: ort_1_thread.predict_tensor(faces), cfg)}
    Path(info["path"]).unlink()  # a ViT-B/32 export is ~350 MB; the benchmark only needed its timing
    return out


# ---------------------------------------------------------------- live pipeline

def _fer_faces(fer_dir: Path) -> list[np.ndarray]:
    """Candidate real faces: the first few test faces of the expressive classes, as 48x48 uint8."""
    from PIL import Image

    test = fer_dir / "test"
    if not test.is_dir():
        raise FileNotFoundError(f"{test} does not exist: the pipeline benchmark composes its frames from real FER2013 "
                                "test faces; pass BenchConfig.fer_dir (a folder with test/<class>/*.jpg)")
    files = [f for cls in ("happy", "neutral", "surprise", "sad", "angry") for f in sorted((test / cls).glob("*"))[:6]]
    return [np.asarray(Image.open(f).convert("L")) for f in files]


def _paste(canvas: np.ndarray, face: np.ndarray, cx: int, cy: int, side: int) -> None:
    import cv2

    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    y0, x0 = cy - side // 2, cx - side // 2
    canvas[y0 : y0 + side, x0 : x0 + side] = big[:, :, None]


def compose_frames(detector, fer_dir: Path) -> dict[int, np.ndarray]:
    """640x480 RGB frames with 1 and 4 real faces (150-200 px) on grey, using faces the detector finds alone."""
    layouts = {1: [(320, 240, 190)], 4: [(160, 120, 200), (480, 120, 180), (160, 360, 160), (480, 360, 150)]}
    usable = []
    for face in _fer_faces(fer_dir):
        probe = np.full((*FRAME_SIZE, 3), 128, np.uint8)
        _paste(probe, face, 320, 240, 176)
        if len(detector.detect(probe)) == 1:
            usable.append(face)
        if len(usable) == 4:
            break
    if len(usable) < 4:
        raise RuntimeError(f"the face detector found only {len(usable)} of the FER2013 test faces it was shown; is it {detector.source}?")
    frames = {}
    for n, spots in layouts.items():
        frame = np.full((*FRAME_SIZE, 3), 128, np.uint8)
        for face, (cx, cy, side) in zip(usable, spots):
            _paste(frame, face, cx, cy, side)
        frames[n] = frame
    return frames


def _time_pipeline(recognizer, frame: np.ndarray, cfg: BenchConfig, rotate: bool = True) -> dict:
    """Per-stage and total wall time of one live frame: recognizer stages, then the overlay. ``rotate`` False
    runs every network of an ensemble on every frame instead of one per frame, as the live view does."""
    from ..inference.overlay import draw_faces
    from ..inference.recognizer import FaceTracker

    tracker = FaceTracker(rotate=rotate)  # as in the live view, where each stream smooths its faces over time
    samples: dict[str, list[float]] = {}
    faces: list = []
    for i in range(cfg.warmup + cfg.frames):
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        faces = recognizer.analyze(frame, tracker=tracker, timings=stages)
        t1 = time.perf_counter()
        draw_faces(frame, faces)
        t2 = time.perf_counter()
        if i < cfg.warmup:
            continue
        stages |= {"overlay": (t2 - t1) * 1000, "total": (t2 - t0) * 1000}
        for stage, ms in stages.items():
            samples.setdefault(stage, []).append(ms)
    return {"faces_detected": len(faces)} | {f"{stage}_ms": _summary(ms) for stage, ms in samples.items()}


def explain_timings(recognizer, frames: dict[int, np.ndarray], cfg: BenchConfig) -> dict:
    """Per frame of ``frames`` (faces -> frame): a photo's analysis (every network, the checkpoint's TTA) plus the
    overlay, without and with Grad-CAM (``emotion.explain``), in ms, and the extra ms per face the explanation costs."""
    from ..inference.explain import explain_image
    from ..inference.overlay import draw_faces

    out = {}
    for n, frame in frames.items():
        faces = recognizer.analyze(frame)
        plain = _time_ms(lambda frame=frame: draw_faces(frame, recognizer.analyze(frame)), cfg)

        def explained(frame=frame) -> None:
            found = recognizer.analyze(frame)
            draw_faces(explain_image(recognizer.classifier, frame, found), found)

        with_cam = _time_ms(explained, cfg)
        out[f"{n}_face"] = {"faces_detected": len(faces), "plain_ms": plain, "explained_ms": with_cam,
                            "explain_ms_per_face": round((with_cam["median"] - plain["median"]) / max(1, len(faces)), 2)}
    return out


# ---------------------------------------------------------------- memory

def memory_probe(checkpoint: str, face_model: str, device: str, frame_path: str) -> dict:
    """Load the app's parts (classifier, detector, recognizer), run a frame and report RSS; run in a fresh process."""
    from ..inference.faces import FaceDetector
    from ..inference.overlay import draw_faces
    from ..inference.recognizer import Recognizer

    detector = FaceDetector(face_model or None, allow_download=False)
    recognizer = Recognizer(EmotionClassifier.from_checkpoint(checkpoint, device=device), detector)
    frame = np.load(frame_path)
    for _ in range(3):
        draw_faces(frame, recognizer.analyze(frame))
    out = {"peak_rss_mb": round(_proc_status_mb("VmHWM"), 1), "rss_mb": round(_proc_status_mb("VmRSS"), 1)}
    if torch.cuda.is_available() and pick_device(device).type == "cuda":
        out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _memory(checkpoint: Path, face_model: str | None, frame: np.ndarray, cfg: BenchConfig, tmp: Path) -> dict:
    """``memory_probe`` in a fresh interpreter, so this process's own allocations do not count."""
    frame_path = tmp / "frame.npy"
    np.save(frame_path, frame)
    code = "import json, sys; from emotion.bench.run import memory_probe; print(json.dumps(memory_probe(*sys.argv[1:])))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code, str(checkpoint), face_model or "", cfg.device, str(frame_path)],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {checkpoint} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the benchmark

def _face_model(cfg: BenchConfig) -> str | None:
    """cfg.face_model, else the copy in ../shared, else None (emotion.inference.faces resolves it: env, cache, download)."""
    if cfg.face_model:
        return cfg.face_model
    shared = REPO.parent / "shared" / "models" / "face_detection_short_range.tflite"
    return str(shared) if shared.is_file() else None


def _bench_model(name: str, checkpoint: Path, detector, face_model: str | None, frames: dict[int, np.ndarray],
                 cfg: BenchConfig, tmp: Path, result: dict) -> None:
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
            pipe = {f"{n}_face": _time_pipeline(recognizer, frame, cfg, rotate) for n, frame in frames.items()}
        finally:
            torch.set_num_threads(default_threads)
        pipe |= {"threads": threads, "model": clf.name,
                 "autocast": str(clf.dtype).replace("torch.", "") if clf.dtype else "off (fp32)"}
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
        result["training"][name] = training_throughput(name, checkpoint, tmp, train_images=cfg.train_images,
                                                       device=cfg.device, amp=cfg.amp)
        log.info("%s: training throughput took %.0fs", name, time.perf_counter() - t0)
    if cfg.memory:
        mem = _memory(checkpoint, face_model, frames[1], cfg, tmp)
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
        out[name] = {"ms": _time_ms(lambda det=det: det.detect(frames[1]), cfg),
                     "ms_4_face": _time_ms(lambda det=det: det.detect(frames[4]), cfg),
                     "faces_found": {f"{n}_face": len(det.detect(frame)) for n, frame in frames.items()}}
    return out


def run_benchmark(cfg: BenchConfig) -> dict:
    """Run every measurement ``cfg`` asks for; returns a JSON-ready dict.

    Keys: ``machine``; ``detector.<blazeface|haar>`` with ``ms.{median,p90,min}`` on the 1-face frame,
    ``ms_4_face`` and ``faces_found`` (blazeface only when its model is found);
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
    result: dict = {"machine": machine_info(device), "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
                    "detector": {}, "pipeline": {}, "pipeline_1_thread": {}, "pipeline_all_networks": {}, "ratios": {}, "forward": {}, "onnx": {},
                    "explain": {}, "training": {}, "memory": {}, "video": {}}
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
