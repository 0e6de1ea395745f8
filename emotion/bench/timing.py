"""What every benchmark shares: its settings, wall-clock timing with medians and percentiles, and the machine."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from ..utils.runtime import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[2]
SHARED_FER = REPO.parent / "shared" / "fer2013"
FRAME_SIZE = (480, 640)  # (height, width) of the synthetic camera frame


@dataclass
class BenchConfig:
    """What to benchmark and how long; the defaults take a few minutes on a 2-core CPU."""

    frames: int = 50  # timed repetitions of each measurement (pipeline frames, forward passes)
    warmup: int = 5  # untimed repetitions first: oneDNN primitive caches, allocator and lazy initialisation
    video_frames: int = (
        300  # frames of the synthetic 640x480 one-face clip timed end to end by video analysis (0 = skip)
    )
    train_images: int = (
        512  # training images per throughput measurement (plus a quarter as many for validation, FER2013's ratio)
    )
    models: tuple[str, ...] = ("cnn", "clip")  # models to time: the offline CNN and/or CLIP
    cnn_checkpoint: str | None = None  # None: predict.default_checkpoint() if it exists, else an untrained default CNN
    clip_model: str = "ViT-B-32"  # open_clip architecture, timed with random weights
    face_model: str | None = (
        None  # BlazeFace .tflite; None resolves as emotion.inference.faces does (../shared copy first)
    )
    fer_dir: str | None = (
        None  # FER2013 folder whose test/ faces compose the frames; None: ../shared/fer2013 beside the repo
    )
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


def summarize_ms(samples_ms: list[float]) -> dict:
    # The minimum is what the hardware can do; median and p90 include what other processes take from it.
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        f: round(float(v), 4) for f, v in (("median", np.median(a)), ("p90", np.percentile(a, 90)), ("min", a.min()))
    } | {"n": len(a)}


def time_ms(fn: Callable[[], object], cfg: BenchConfig, sync: Callable[[], None] = lambda: None) -> dict:
    """Median and p90 wall time of ``fn`` over ``cfg.frames`` calls after ``cfg.warmup`` untimed ones."""
    samples = []
    for i in range(cfg.warmup + cfg.frames):
        t0 = time.perf_counter()
        fn()
        sync()
        if i >= cfg.warmup:
            samples.append((time.perf_counter() - t0) * 1000)
    return summarize_ms(samples)


def proc_status_mb(field: str) -> float:
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
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "native_bf16": cpu_has_native_bf16(),
        "device": str(device),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
