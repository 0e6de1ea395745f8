"""The benchmark's report: its targets, judged pass or miss, and its result rendered as readable tables.

``emotion.bench.run.run_benchmark`` measures and calls ``evaluate_targets``; ``format_report`` turns the
result (a JSON-ready dict) into the text ``train_cli.py bench`` prints.
"""

from __future__ import annotations

TARGETS = {  # (comparison, limit) per target; see evaluate_targets
    "cnn_1_face_total_ms": ("<=", 15.0),
    "haar_detect_ms": ("<=", 10.0),
    "clip_1_face_total_ms": ("<=", 50.0),
    "four_vs_one_face": ("<=", 1.5),
    "total_over_forward": ("<=", 1.3),
    "frozen_cache_speedup": (">=", 5.0),
    "video_fps": (">=", 40.0),
}


def evaluate_targets(result: dict) -> list[dict]:
    """Each target with the measured value and whether it passes."""
    checks: list[tuple[str, str, float | None]] = []
    pipe, ratios = result["pipeline"], result["ratios"]
    if "cnn" in pipe:
        checks.append(("CNN pipeline, 1 face (ms)", "cnn_1_face_total_ms", pipe["cnn"]["1_face"]["total_ms"]["median"]))
    if "clip" in pipe:
        checks.append(
            ("CLIP pipeline, 1 face (ms)", "clip_1_face_total_ms", pipe["clip"]["1_face"]["total_ms"]["median"])
        )
    haar = result.get("detector", {}).get("haar")
    if haar:
        checks.append(("Haar fallback detector, 640x480 frame (ms)", "haar_detect_ms", haar["ms"]["median"]))
    for name, r in ratios.items():
        checks.append((f"{name}: 4 faces / 1 face", "four_vs_one_face", r["four_vs_one_face"]))
        checks.append((f"{name}: total / forward, 1 face", "total_over_forward", r["total_over_forward_1_face"]))
    frozen = result["training"].get("clip", {}).get("frozen_phase")
    if frozen:
        checks.append(("CLIP frozen phase: time without / with cache", "frozen_cache_speedup", frozen["speedup"]))
    video = result.get("video")
    if video:
        checks.append(("video analysis, 640x480, 1 face, every frame (frames/s)", "video_fps", video["fps"]))
    out = []
    for label, key, value in checks:
        op, limit = TARGETS[key]
        ok = value <= limit if op == "<=" else value >= limit
        out.append({"target": label, "key": key, "value": value, "limit": f"{op} {limit:g}", "pass": bool(ok)})
    return out


def _table(headers: list[str], rows: list[list]) -> list[str]:
    cells = [headers] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False)))
        for r in cells
    ]
    return [lines[0], "-" * len(lines[0])] + lines[1:]


def _faces(key: str) -> str:
    n = int(key.split("_")[0])
    return f"{n} face" + ("s" if n > 1 else "")


def _machine_section(m: dict) -> list[str]:
    """The machine and its load, which every figure below depends on."""
    return [
        f"machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), torch {m['torch']}, "
        f"native bf16: {'yes' if m['native_bf16'] else 'no'}, device {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}",
        f"load average {m['load_avg_1m']} at start, {m.get('load_avg_1m_end', '?')} at end (other work inflates every figure)",
        f"face detector: {m.get('face_detector', '?')}",
        "",
    ]


def _detector_section(result: dict) -> list[str]:
    """Face detectors timed alone; empty when none was."""
    rows = [
        [
            name,
            f"{d['ms']['median']:.2f}/{d['ms']['p90']:.2f}",
            f"{d['ms_4_face']['median']:.2f}/{d['ms_4_face']['p90']:.2f}",
            " ".join(f"{v}/{k.split('_')[0]}" for k, v in d["faces_found"].items()),
            f"{d['ms_small_faces']['median']:.2f}/{d['ms_small_faces']['p90']:.2f}" if "ms_small_faces" in d else "-",
        ]
        for name, d in result.get("detector", {}).items()
    ]
    if not rows:
        return []
    return (
        ["face detectors alone, 640x480 frame, ms median/p90"]
        + _table(["detector", "1 face", "4 faces", "found", "1 face, photo (+ tiles)"], rows)
        + [""]
    )


def _pipeline_section(result: dict) -> list[str]:
    """The live pipeline per stage (all threads, 1 thread, all networks), then its ratios; empty when not run."""
    stages = ["detect", "crop", "forward", "smooth", "overlay", "total"]
    rows = []
    for key, label in (
        ("pipeline", ""),
        ("pipeline_1_thread", ", 1 thread"),
        ("pipeline_all_networks", ", all networks"),
    ):
        for name, pipe in result.get(key, {}).items():
            for n in ("1_face", "4_face"):
                p = pipe[n]
                rows.append(
                    [f"{name}{label}, {_faces(n)}", p["faces_detected"]]
                    + [
                        f"{p[f'{s}_ms']['median']:.2f}/{p[f'{s}_ms']['p90']:.2f}" if f"{s}_ms" in p else "-"
                        for s in stages
                    ]
                    + [p["total_ms"]["min"]]
                )
    if not rows:
        return []
    threads = ", ".join(f"{name} {pipe['threads']}" for name, pipe in result["pipeline"].items())
    out = [
        f"live pipeline, 640x480 frame, ms median/p90 (torch threads: {threads}; and 1 thread; an ensemble runs "
        "one network on one TTA view per frame, in turn, and 'all networks' every network and view on every frame)"
    ]
    out += _table(["frame", "found"] + stages + ["total min"], rows) + [""]
    out += _table(
        ["model", "total/forward 1 face", "total/forward 4 faces", "4 faces / 1 face"],
        [
            [k, r["total_over_forward_1_face"], r["total_over_forward_4_face"], r["four_vs_one_face"]]
            for k, r in result["ratios"].items()
        ],
    ) + [""]
    return out


def _forward_section(result: dict) -> list[str]:
    """The forward pass alone per model and variant; empty when none was timed."""
    rows = [
        [name, variant] + [f"{v[n]['median']:.2f} ({v[n]['min']:.2f})" for n in ("1_face", "4_face")]
        for name, variants in result["forward"].items()
        for variant, v in variants.items()
    ]
    if not rows:
        return []
    return (
        ["forward pass (preprocess + model, input on the device), ms median (min)"]
        + _table(["model", "variant", "1 face", "4 faces"], rows)
        + [""]
    )


def _onnx_section(result: dict) -> list[str]:
    """PyTorch against ONNX Runtime; empty when not compared."""
    rows = [
        [name, _faces(n)]
        + [o[n][k]["median"] for k in ("torch_ms", "onnxruntime_ms", "onnxruntime_1_thread_ms")]
        + [f"{o['max_abs_diff']:.1e}"]
        for name, o in result["onnx"].items()
        for n in ("1_face", "4_face")
    ]
    if not rows:
        return []
    return (
        ["predict_tensor: PyTorch vs ONNX Runtime, ms median"]
        + _table(["model", "faces", "pytorch", "onnxruntime", "onnxruntime 1 thread", "max |diff|"], rows)
        + [""]
    )


def _explain_section(result: dict) -> list[str]:
    """Photo analysis without and with Grad-CAM; empty when not timed."""
    rows = [
        [
            name,
            _faces(n),
            f"{e['plain_ms']['median']:.1f}",
            f"{e['explained_ms']['median']:.1f}",
            e["explain_ms_per_face"],
        ]
        for name, frames in result.get("explain", {}).items()
        for n, e in frames.items()
    ]
    if not rows:
        return []
    return (
        ["photo analysis + overlay (every network, the checkpoint's TTA), without and with Grad-CAM, ms median"]
        + _table(["model", "faces", "without", "with Grad-CAM", "Grad-CAM ms per face"], rows)
        + [""]
    )


def _training_section(result: dict) -> list[str]:
    """Training throughput per model and phase, and what CLIP's embedding cache saves; empty when not run."""
    rows = [
        [name, phase, t.get("precision", ""), t["images_per_s"], t["seconds"], t.get("embed_seconds", "")]
        for name, phases in result["training"].items()
        for phase, t in phases.items()
        if "images_per_s" in t
    ]
    if not rows:
        return []
    out = ["training throughput (real trainer)"] + _table(
        ["model", "phase", "precision", "images/s", "epoch s", "embed s"], rows
    )
    frozen = result["training"].get("clip", {}).get("frozen_phase")
    if frozen:
        out.append(
            f"CLIP frozen phase, epochs 1-{frozen['epochs']}: {frozen['with_cache_s']}s with the cache vs "
            f"{frozen['without_cache_s']}s without ({frozen['speedup']}x; {frozen['speedup_incl_validation']}x counting "
            f"validation) for {frozen['train_images']} images; "
            f"on FER2013 about {frozen['fer2013_with_cache_min']} vs {frozen['fer2013_without_cache_min']} min"
        )
    return out + [""]


def _video_and_memory_section(result: dict) -> list[str]:
    """Video analysis speed and the app's memory, one line each when measured."""
    out = []
    video = result.get("video")
    if video:
        out += [
            f"video analysis (train_cli.py video, {video['size'][0]}x{video['size'][1]}, 1 face, every frame, "
            f"{video['torch_threads']} torch thread): {video['fps']} frames/s over {video['frames']} frames",
            "",
        ]
    if result["memory"]:
        out += [
            "app memory (fresh process: classifier + detector + one frame): "
            + ", ".join(f"{k} {v:.0f} MB" for k, v in result["memory"].items()),
            "",
        ]
    return out


def format_report(result: dict) -> str:
    """The benchmark as readable tables, targets marked PASS or MISS."""
    out = [
        *_machine_section(result["machine"]),
        *_detector_section(result),
        *_pipeline_section(result),
        *_forward_section(result),
        *_onnx_section(result),
        *_explain_section(result),
        *_training_section(result),
        *_video_and_memory_section(result),
    ]
    out += ["targets"] + _table(
        ["target", "value", "limit", "result"],
        [[t["target"], t["value"], t["limit"], "PASS" if t["pass"] else "MISS"] for t in result["targets"]],
    )
    return "\n".join(out)
