"""Small runtime helpers shared by training, evaluation, prediction and the UI: device, AMP, files."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity masks
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fastest(
    candidates: Mapping[str, Callable[[], object]], repeats: int = 7, warmup: int = 2
) -> tuple[str, dict[str, float]]:
    """The name of the quickest of ``candidates`` (callables doing one unit of work) and each one's median
    seconds. A native bf16 flag does not make bf16 fast: on a 2-core Xeon with AVX512-BF16, bf16 trained this
    project's CNN 1.2x slower than fp32 and ran the shipped ensemble 2.6x slower than fp32 on ONNX Runtime,
    where an AMD EPYC with the same flag trained 2.5x faster in bf16; so the "auto" settings time both on
    the machine at hand."""
    for work in candidates.values():
        for _ in range(warmup):
            work()
    runs: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):  # round robin, so a passing load on the machine weighs on every candidate alike
        for name, work in candidates.items():
            t0 = time.perf_counter()
            work()
            runs[name].append(time.perf_counter() - t0)
    seconds = {name: statistics.median(times) for name, times in runs.items()}
    return min(seconds, key=seconds.get), seconds


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name} was asked for but CUDA is not available; use --device cpu")
    return device


def amp_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``, or None for full fp32."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp != "auto":
        raise ValueError(f"amp must be auto, bf16, fp16 or off, got {amp!r}")
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def faster_training_dtype(model: torch.nn.Module, batch: torch.Tensor, device: torch.device) -> torch.dtype | None:
    """bf16 or fp32 (None), whichever trains ``model`` faster here: a forward and backward pass of a copy of
    it on ``batch`` is timed in both. For ``amp="auto"`` on a CPU with native bf16; the model is untouched."""
    probe = copy.deepcopy(model).train()

    def step(dtype: torch.dtype | None):
        def run() -> None:
            with autocast_for(device, dtype):
                out = probe(batch)
            out.float().square().mean().backward()

        return run

    name, seconds = fastest({"bf16": step(torch.bfloat16), "fp32": step(None)}, repeats=3, warmup=1)
    log.info(
        "amp auto: a training step of %d images takes %.0f ms in bf16 and %.0f ms in fp32; training in %s",
        len(batch),
        seconds["bf16"] * 1e3,
        seconds["fp32"] * 1e3,
        name,
    )
    return torch.bfloat16 if name == "bf16" else None


def autocast_for(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """An autocast context for ``dtype``, or a no-op when it is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write JSON to ``path`` via a temp file and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=2))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # a full disk must not leave a partial temp file behind
        raise


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON-lines file; a missing file or a half-written last line is tolerated."""
    rows = []
    try:
        with open(path) as fh:
            for line in fh:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return rows
