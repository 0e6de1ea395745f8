"""Issue 9's closing figures, measured against the real app in its own process: `python tests/security_figures.py`.

Prints (and with --json, one JSON object):
- the peak memory (VmHWM) of the app after a 13000x13000 PNG went through analyze_photo and analyze_frame,
  and the peak memory of `train_cli.py predict` on it;
- the failures among 16 concurrent identical uploads (each result downloaded, as gradio_client does);
- the number of files under Gradio's temp folder 75 s after 20 uploads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]
from conftest import free_port  # noqa: E402
from test_security import huge_png  # noqa: E402

FACE_MODEL = ROOT.parent / "shared" / "models" / "face_detection_short_range.tflite"


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _start_app(temp_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_TEMP_DIR": str(temp_dir), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--no-training", "--device", "cpu"]
    if FACE_MODEL.is_file():
        cmd += ["--face-model", str(FACE_MODEL)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the app did not start within 120 s")


def _files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--wait", type=float, default=75.0, help="seconds after the 20 uploads before counting files")
    args = parser.parse_args()
    from gradio_client import Client, handle_file

    work = Path(tempfile.mkdtemp(prefix="security-figures-"))
    temp_dir, downloads = work / "gradio", work / "downloads"
    huge = huge_png(work / "huge.png")
    photo = work / "face.jpg"
    face = next((ROOT.parent / "shared" / "fer2013" / "test" / "happy").glob("*.jpg"))
    big = np.asarray(Image.open(face).convert("RGB").resize((200, 200)))
    canvas = np.full((480, 640, 3), 170, np.uint8)
    canvas[140:340, 220:420] = big
    Image.fromarray(canvas).save(photo, quality=90)
    figures: dict[str, object] = {
        "contended": os.getloadavg()[0] > 1.0,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }

    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report this process's peak.
    code = (
        "import re, sys, train_cli; train_cli.main(sys.argv[1:]); status = open('/proc/self/status').read(); "
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1)) / 1024)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "predict", str(huge), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    figures["cli_predict_13000px_png_peak_mb"] = round(float(out.stdout.strip().splitlines()[-1]), 1)

    port = free_port()
    proc = _start_app(temp_dir, port)
    try:
        url = f"http://127.0.0.1:{port}/"
        client = Client(url, verbose=False, download_files=str(downloads))
        figures["app_idle_peak_mb"] = round(_peak_mb(proc.pid), 1)
        photo_result = client.predict(handle_file(str(huge)), False, api_name="/analyze_photo")[1]
        frame_result = client.predict(handle_file(str(huge)), api_name="/analyze_frame")[2]
        figures["app_13000px_png_peak_mb"] = round(_peak_mb(proc.pid), 1)
        figures["app_13000px_png_messages"] = [photo_result, frame_result]

        def one(_: int) -> bool:
            try:
                annotated, message, *_ = Client(url, verbose=False, download_files=str(downloads)).predict(
                    handle_file(str(photo)), False, api_name="/analyze_photo"
                )
                return message.startswith("Found") and Path(annotated).stat().st_size > 0
            except Exception as exc:  # counted as a failure, whatever it is
                print(f"request failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                return False

        with ThreadPoolExecutor(16) as pool:
            ok = list(pool.map(one, range(16)))
        figures["concurrent_identical_uploads"] = 16
        figures["concurrent_failures"] = ok.count(False)

        for _ in range(20):  # the files of the 16 above are older, so they must be gone by the count too
            client.predict(handle_file(str(photo)), False, api_name="/analyze_photo")
        figures["files_right_after_20_uploads"] = _files(temp_dir)
        time.sleep(args.wait)
        figures[f"files_{int(args.wait)}s_after_20_uploads"] = _files(temp_dir)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(json.dumps(figures) if args.json else "\n".join(f"{k}: {v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
