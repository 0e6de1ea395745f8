"""The benchmark runs end to end at tiny sizes and reports every figure the CLI's --json promises.

Behaviour only: timings on a shared test machine are not asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emotion.bench.report import format_report
from emotion.bench.run import run_benchmark
from emotion.bench.timing import BenchConfig
from emotion.utils.runtime import cpu_cores


def _get(result: dict, dotted: str):
    value = result
    for key in dotted.split("."):
        assert isinstance(value, dict) and key in value, f"benchmark result has no '{dotted}' (stopped at '{key}')"
        value = value[key]
    return value


@pytest.fixture(scope="module")
def quick_result(face_model_path: Path, real_faces) -> dict:
    cfg = BenchConfig.quick()
    cfg.face_model = str(face_model_path)
    return run_benchmark(cfg)


def test_quick_benchmark_reports_every_key(quick_result: dict) -> None:
    r = quick_result
    positive = ["memory.clip_app_rss_mb", "training.cnn.full.images_per_s", "video.fps"]
    assert _get(r, "video.face_ids") == 1 and _get(r, "video.torch_threads") == 1
    positive += [f"training.clip.{phase}.images_per_s" for phase in ("frozen_cached", "frozen_uncached", "unfrozen")]
    for detector in ("blazeface", "haar"):
        positive += [
            f"detector.{detector}.ms.median",
            f"detector.{detector}.ms.p90",
            f"detector.{detector}.ms_4_face.median",
        ]
        assert _get(r, f"detector.{detector}.faces_found.1_face") == 1
    positive.append("detector.blazeface.ms_small_faces.median")  # the photo path's tile pass (Haar has none)
    for model in ("cnn", "clip"):
        assert (
            _get(r, f"pipeline.{model}.threads") == cpu_cores() and _get(r, f"pipeline_1_thread.{model}.threads") == 1
        )
        for n in (1, 4):
            base = f"pipeline.{model}.{n}_face"
            positive += [
                f"{base}.total_ms.median",
                f"{base}.total_ms.p90",
                f"{base}.forward_ms.median",
                f"pipeline_1_thread.{model}.{n}_face.total_ms.median",
            ]
            for stage in ("detect", "crop", "smooth", "overlay"):
                assert _get(r, f"{base}.{stage}_ms.median") >= 0
            assert _get(r, f"{base}.faces_detected") == n, f"the {n}-face frame should show {n} detected faces"
        positive += [
            f"ratios.{model}.four_vs_one_face",
            f"ratios.{model}.total_over_forward_1_face",
            f"forward.{model}.fp32.1_face.median",
            f"onnx.{model}.4_face.onnxruntime_ms.median",
        ]
        assert _get(r, f"onnx.{model}.parity_ok")
    positive += ["training.clip.frozen_phase.speedup", "training.clip.frozen_cached.embed_seconds"]
    # The shipped CNN is an ensemble: its live pipeline is also timed with every network on every frame.
    positive += [f"pipeline_all_networks.cnn.{n}_face.forward_ms.median" for n in (1, 4)]
    for key in positive:
        value = _get(r, key)
        assert isinstance(value, (int, float)) and value > 0, f"{key} = {value!r}, expected a positive number"
    for key in ("cpu", "cores", "torch", "native_bf16"):
        _get(r, f"machine.{key}")
    assert {t["key"] for t in r["targets"]} >= {
        "cnn_1_face_total_ms",
        "haar_detect_ms",
        "clip_1_face_total_ms",
        "four_vs_one_face",
        "total_over_forward",
        "frozen_cache_speedup",
    }
    json.dumps(r)  # the --json output must serialise


def test_format_report_renders(quick_result: dict) -> None:
    text = format_report(quick_result)
    for heading in (
        "face detectors",
        "live pipeline",
        "forward pass",
        "ONNX Runtime",
        "training throughput",
        "app memory",
        "targets",
    ):
        assert heading in text
    assert "PASS" in text or "MISS" in text
    assert "frozen_uncached" in text and "clip, 4 faces" in text and "cnn, 1 thread, 1 face" in text
