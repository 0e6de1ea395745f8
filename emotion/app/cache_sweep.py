"""Deletes the app's uploads, webcam frames and result images from Gradio's temp folder once they are old enough.

Gradio's own sweep (``gr.Blocks(delete_cache=...)``) iterates the live sets of temp files while requests add to
them. Under steady traffic (a webcam sends up to 50 frames a second) it soon fails with "Set changed size during
iteration", and from then on deletes nothing until shutdown: with four clients sending frames for 40 s, all 549
files were still there 12 s after their 8 s maximum age. This sweep walks a snapshot of each set instead, and a
failure to delete one file never stops it.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import gradio as gr

log = logging.getLogger(__name__)


def _protected(blocks: gr.Blocks) -> set[str]:
    """Files that components keep for the app's whole life (e.g. example images); never deleted."""
    keep: set[str] = set()
    for component in list(blocks.blocks.values()):
        keep.update(getattr(component, "keep_in_cache", ()))
    return keep


def sweep_temp_files(blocks: gr.Blocks, max_age_s: float | None) -> int:
    """Delete the files ``blocks`` created that are older than ``max_age_s`` (all of them when None); how many.

    Age is taken from the file's ctime, as Gradio does. Safe while requests add files from other threads.
    """
    keep = _protected(blocks)
    now = time.time()
    deleted = 0
    for temp_set in list(blocks.temp_file_sets):
        for path in list(temp_set):  # a snapshot: requests add to the set while we walk it
            if path in keep:
                continue
            try:
                if max_age_s is not None and now - os.lstat(path).st_ctime <= max_age_s:
                    continue
                os.remove(path)
                deleted += 1
            except FileNotFoundError:
                pass  # already gone (e.g. removed by hand): forget it
            except OSError as exc:
                log.warning("could not delete the temp file %s: %s", path, exc)
                continue
            temp_set.discard(path)
    return deleted


class CacheSweeper:
    """A daemon thread that runs ``sweep_temp_files`` every ``every_s`` seconds; ``stop`` deletes everything left."""

    def __init__(self, blocks: gr.Blocks, every_s: float, max_age_s: float):
        if every_s <= 0 or max_age_s < 0:
            raise ValueError(
                f"cache sweep every {every_s} s for files older than {max_age_s} s: need every_s > 0 and max_age_s >= 0"
            )
        self.blocks = blocks
        self.every_s = every_s
        self.max_age_s = max_age_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sweeping in the background (once; later calls do nothing while it runs)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="emotion-cache-sweep", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                sweep_temp_files(self.blocks, self.max_age_s)
            except Exception:  # one bad sweep must not end the sweeping, or "not stored" silently stops holding
                log.exception("the temp-file sweep failed; trying again in %s s", self.every_s)

    def stop(self) -> None:
        """Stop the thread and delete every file the app still has in Gradio's temp folder."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        deleted = sweep_temp_files(self.blocks, None)
        log.info("deleted %d uploads and results at shutdown", deleted)
