"""The Video tab: upload a clip, follow its progress, get the annotated video, the timeline and the CSV.

Nothing stays on disk: each run works in a folder of its own inside Gradio's cache, from which the results
are served without copies. The folder and the uploaded file are deleted ``OUTPUT_TTL_S`` after the results
are shown, and at once when the run is cancelled or fails. The Cancel button sets its browser session's
flag, which the handler checks at every frame: it then shows "Cancelled" as its own last update, so no
progress update still in flight can overwrite it. A run cancelled by Gradio itself (an API client's
cancel, a closed page) is closed at its next update; either way its ``finally`` cleans up.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..data.labels import display
from ..video.analysis import VideoConfig, VideoError, VideoJob, VideoResult
from .config import AppConfig
from .live import no_model_message

if TYPE_CHECKING:
    from .model_panel import ModelManager

log = logging.getLogger(__name__)

MAX_VIDEO_SECONDS = 60  # longer clips are refused: a minute of 30 fps video takes about a minute on 2 CPU cores
VIDEO_MAX_SIDE = 960  # frames are analyzed and the result encoded at this longer side at most (VP8 encoding is costly)
OUTPUT_TTL_S = 60.0  # results are served this long after they are shown, then deleted with the upload
PROGRESS_EVERY_S = 0.5  # seconds between progress updates, which are also the points where a Cancel takes effect
WORK_PREFIX = "emotion-video-"  # name prefix of each run's folder in Gradio's cache
MAX_EVERY = 10  # the slider's largest "one frame in N"
CANCELLED = "Cancelled: nothing of this video was kept."


class Sweeper:
    """Deletes files and folders now or after a delay, and whatever is still pending when the app exits."""

    def __init__(self) -> None:
        self._pending: set[Path] = set()
        self._lock = threading.Lock()
        atexit.register(self.sweep_all)

    def now(self, *paths: Path | None) -> None:
        """Delete ``paths`` (missing ones are ignored)."""
        for path in paths:
            if path is None:
                continue
            with self._lock:
                self._pending.discard(path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def later(self, delay_s: float, *paths: Path | None) -> None:
        """Delete ``paths`` after ``delay_s`` seconds (or at exit, whichever comes first)."""
        with self._lock:
            self._pending.update(p for p in paths if p is not None)
        timer = threading.Timer(delay_s, self.now, args=paths)
        timer.daemon = True
        timer.start()

    def sweep_all(self) -> None:
        """Delete everything still pending."""
        with self._lock:
            pending = list(self._pending)
        self.now(*pending)


def _upload_path(video: Any) -> Path | None:
    """The uploaded file's path from Gradio's payload (a dict with "path") or a plain path."""
    if isinstance(video, dict):
        video = video.get("path") or (video.get("video") or {}).get("path")
    return Path(video) if isinstance(video, (str, Path)) and str(video) else None


def _every(value: Any) -> int:
    """The slider's "one frame in N" as an int in 1..MAX_EVERY (anything else from an API call becomes 1)."""
    try:
        return min(MAX_EVERY, max(1, int(float(value))))
    except (TypeError, ValueError, OverflowError):
        return 1


def _summary_markdown(result) -> str:
    """The outcome in a few lines: frames, speed and each face's dominant emotion."""
    lines = [
        f"Analyzed {result.analyzed_frames} of {result.frames} frames ({result.info.width}×{result.info.height}, "
        f"{result.frames / result.info.fps:.1f} s) at {result.fps:.0f} frames/s."
    ]
    for face in result.faces[:10]:
        lines.append(
            f"- **Face {face['face_id']}** ({face['first_s']:.1f}–{face['last_s']:.1f} s): mostly "
            f"{display(face['dominant'])} ({face['share'][face['dominant']]:.0%} of its frames)"
        )
    if len(result.faces) > 10:
        lines.append(f"- … and {len(result.faces) - 10} more faces in faces.csv")
    lines.append(
        f"\nResults are deleted from the server {OUTPUT_TTL_S:.0f} s after they appear: download what you need."
    )
    return "\n".join(lines)


def _upload_refusal(path: Path | None, cache_root: Path) -> str | None:
    """Why the upload at ``path`` is not analyzed (no file, or one outside Gradio's cache), or None to go on."""
    if path is None:
        return f"Upload a video (MP4, WebM, MOV, AVI; at most {MAX_VIDEO_SECONDS} s) to see the emotion of each face over time."
    if not path.resolve().is_relative_to(cache_root.resolve()):
        # Gradio already refuses files outside its upload folder; this handler deletes what it reads, so it checks too.
        log.warning("refused a video path outside Gradio's cache: %s", path)
        return "⚠️ No uploaded video was received; please upload the file again."
    return None


def _follow_job(
    job: VideoJob, progress: gr.Progress | None, cancelled: threading.Event | None
) -> Generator[tuple, None, bool]:
    """Run ``job`` to its end, yielding a progress update every ``PROGRESS_EVERY_S``; returns True when cancelled.

    On cancel it yields the "Cancelled" message as its last update (see the module docstring for why).
    """
    total = job.info.frame_count
    last = time.perf_counter()
    start = last
    for item in job:
        if cancelled is not None and cancelled.is_set():
            yield None, None, None, CANCELLED
            return True
        now = time.perf_counter()
        if now - last >= PROGRESS_EVERY_S:
            last = now
            done = item.frame.index + 1
            rate = done / (now - start)
            if progress is not None:
                progress((done, total or None), desc="Analyzing", unit="frames")
            of = f" of {total} ({done / total:.0%})" if total else ""
            yield gr.skip(), gr.skip(), gr.skip(), f"Analyzing: frame {done}{of}, {rate:.0f} frames/s …"
    return False


def _result_update(result: VideoResult) -> tuple[tuple, bool]:
    """The last update for a finished job's ``result``, and whether it shows results the browser will fetch."""
    if not result.faces:
        problem = result.problem()
        gr.Warning(problem[0].upper() + problem[1:] + ".")
        return (
            None,
            None,
            None,
            f"⚠️ {problem[0].upper() + problem[1:]}. Faces that are small, turned away or dark are hard to detect.",
        ), False
    message = _summary_markdown(result)
    if result.truncated:
        gr.Warning(result.problem())
        message = f"⚠️ {result.problem()}.\n\n{message}"
    files = [str(p) for p in (result.annotated, result.csv, result.timeline, result.summary)]
    return (str(result.annotated), str(result.timeline), files, message), True


def analyze_clip(
    models: ModelManager,
    video: Any,
    every: int,
    sweeper: Sweeper,
    cache_root: Path,
    progress: gr.Progress | None = None,
    cancelled: threading.Event | None = None,
) -> Iterator[tuple]:
    """A generator of (annotated video, timeline image, files to download, message) updates for one upload;
    once ``cancelled`` is set it stops at the next frame, with the "Cancelled" message as its last update.

    Bad input (not a video, empty, truncated, too long, no faces) is shown as a warning, never raised.
    """
    path = _upload_path(video)
    refusal = _upload_refusal(path, cache_root)
    if refusal is not None:
        yield None, None, None, refusal
        return
    recognizer = models.recognizer
    if recognizer is None:
        yield None, None, None, no_model_message(models)
        return
    cache_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=cache_root))
    job, shown = None, False
    try:
        config = VideoConfig(
            every=_every(every), max_side=VIDEO_MAX_SIDE, annotated_name="annotated.webm", max_seconds=MAX_VIDEO_SECONDS
        )
        job = VideoJob(path, work, recognizer, config)
        if (yield from _follow_job(job, progress, cancelled)):
            return
        # Set before the yield: from here the results belong to the browser, deleted on the TTL, not at once.
        update, shown = _result_update(job.result)
        yield update
    except VideoError as exc:
        log.info("video upload refused: %s", exc)
        gr.Warning(str(exc))
        yield None, None, None, f"⚠️ {exc}"
    except Exception:
        log.exception("video analysis failed")
        gr.Warning("Something went wrong analyzing this video; the details are in the server log.")
        yield None, None, None, "⚠️ This video could not be analyzed."
    finally:
        if job is not None:
            job.close()
        if shown:
            sweeper.later(OUTPUT_TTL_S, work, path)
        else:  # failed or cancelled: nothing is left to serve
            sweeper.now(work, path)


def build_video_tab(models: ModelManager, config: AppConfig) -> None:
    """The Video tab: a clip in; progress; annotated video, timeline and downloads out; cancellable."""
    sweeper = Sweeper()
    with gr.Tab("Video", id="video"):
        with gr.Row():
            with gr.Column():
                # A file field, not gr.Video: the browser cannot preview many valid videos (MPEG-4 Part 2, HEVC, AVI)
                # and gr.Video flags each of them as an error, although OpenCV analyzes them fine.
                video = gr.File(
                    file_types=["video"],
                    type="filepath",
                    elem_id="video-input",
                    label=f"Video (MP4, WebM, MOV, AVI, MKV; at most {MAX_VIDEO_SECONDS} s and {config.max_file_size.upper()})",
                )
                every = gr.Slider(
                    1,
                    MAX_EVERY,
                    value=1,
                    step=1,
                    label="Analyze one frame in N",
                    info="higher is faster; the frames between keep the last labels",
                )
                with gr.Row():
                    run = gr.Button("Analyze", variant="primary", elem_id="video-run")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="video-cancel")
                message = gr.Markdown(elem_id="video-message")
            with gr.Column():
                annotated = gr.Video(label="Annotated video", interactive=False, elem_id="video-annotated")
                files = gr.File(
                    label="Downloads: annotated video, faces.csv, timeline.png, summary.json",
                    file_count="multiple",
                    interactive=False,
                    elem_id="video-files",
                )
        timeline = gr.Image(label="Emotions over time", type="filepath", interactive=False, elem_id="video-timeline")

        cache_root = Path(annotated.GRADIO_CACHE)
        runs: dict[str, threading.Event] = {}  # browser session -> the cancel flag of its run in progress

        def on_run(clip, n, request: gr.Request, progress=gr.Progress()):  # noqa: B008 - how Gradio injects a progress bar
            session = request.session_hash or ""
            flag = runs[session] = threading.Event()
            try:
                yield from analyze_clip(models, clip, n, sweeper, cache_root, progress, flag)
            finally:
                if runs.get(session) is flag:
                    del runs[session]

        def on_cancel(request: gr.Request):
            flag = runs.get(request.session_hash or "")
            if flag is None:
                return gr.skip()  # no run of this page to cancel
            flag.set()
            return CANCELLED

        # preprocess=False: the handler opens the file itself, so Gradio never converts or probes an upload.
        run.click(
            on_run,
            inputs=[video, every],
            outputs=[annotated, timeline, files, message],
            preprocess=False,
            api_name="analyze_video",
            concurrency_limit=1,
        )
        cancel.click(on_cancel, outputs=message, api_visibility="private")
