"""The app's sweep of Gradio's temp folder: old uploads and results go, while requests keep adding new ones."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from emotion.app.cache_sweep import CacheSweeper, sweep_temp_files


def fake_blocks(*temp_sets: set[str], keep: set[str] | None = None) -> SimpleNamespace:
    """What the sweep reads of a gr.Blocks: its sets of temp files and components that keep some files."""
    component = SimpleNamespace(keep_in_cache=keep or set())
    return SimpleNamespace(blocks={1: component, 2: SimpleNamespace()}, temp_file_sets=list(temp_sets))


def touch(path: Path) -> str:
    path.write_bytes(b"x")
    return str(path)


def test_old_files_go_young_and_kept_ones_stay(tmp_path: Path) -> None:
    old, kept = touch(tmp_path / "old.webp"), touch(tmp_path / "example.jpg")
    time.sleep(0.6)
    young = touch(tmp_path / "young.webp")
    missing = str(tmp_path / "gone.webp")
    uploads, results = {old, missing}, {young, kept}
    blocks = fake_blocks(uploads, results, keep={kept})

    assert sweep_temp_files(blocks, max_age_s=0.3) == 1
    assert not Path(old).exists() and Path(young).exists() and Path(kept).exists()
    assert uploads == set() and results == {young, kept}  # deleted and missing files are forgotten

    assert sweep_temp_files(blocks, max_age_s=None) == 1  # shutdown: everything but what components keep
    assert not Path(young).exists() and Path(kept).exists()


def test_sweeping_while_requests_add_files_never_fails(tmp_path: Path) -> None:
    # 30-40 s of webcam frames are young files waiting for their age; walking them while requests add more is
    # where Gradio's own sweep dies of "Set changed size during iteration" (it does here, with these numbers).
    temp_files = {touch(tmp_path / f"young{i}.webp") for i in range(2000)}
    blocks = fake_blocks(temp_files)
    stop = threading.Event()

    def requests() -> None:
        i = 0
        while not stop.is_set():
            temp_files.add(touch(tmp_path / f"frame{i}.webp"))
            i += 1

    adder = threading.Thread(target=requests)
    adder.start()
    try:
        kept = sum(sweep_temp_files(blocks, max_age_s=3600) for _ in range(20))
    finally:
        stop.set()
        adder.join()
    assert kept == 0 and len(temp_files) > 2000
    assert sweep_temp_files(blocks, max_age_s=None) > 2000
    assert temp_files == set() and not list(tmp_path.iterdir())


def test_a_file_that_cannot_be_deleted_is_kept_and_the_rest_still_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import emotion.app.cache_sweep as cache_sweep

    stuck, other = touch(tmp_path / "stuck.webp"), touch(tmp_path / "other.webp")
    real_remove = cache_sweep.os.remove

    def remove(path: str) -> None:
        if path == stuck:
            raise PermissionError(13, "Permission denied", path)
        real_remove(path)

    monkeypatch.setattr(cache_sweep.os, "remove", remove)
    temp_files = {stuck, other}
    assert sweep_temp_files(fake_blocks(temp_files), max_age_s=None) == 1
    assert temp_files == {stuck} and not Path(other).exists()  # tried again on the next sweep


def test_the_sweeper_thread_deletes_in_the_background_and_everything_on_stop(tmp_path: Path) -> None:
    temp_files = {touch(tmp_path / "upload.jpg")}
    sweeper = CacheSweeper(fake_blocks(temp_files), every_s=0.05, max_age_s=0)
    sweeper.start()
    sweeper.start()  # a second start while running does nothing
    try:
        deadline = time.time() + 10
        while temp_files and time.time() < deadline:
            time.sleep(0.05)
        assert not temp_files and not (tmp_path / "upload.jpg").exists()
        sweeper.max_age_s = 3600  # a young file stays while the app runs...
        temp_files.add(touch(tmp_path / "result.webp"))
        time.sleep(0.2)
        assert (tmp_path / "result.webp").exists()
    finally:
        sweeper.stop()
    assert not (tmp_path / "result.webp").exists() and not temp_files  # ...and goes when it closes


@pytest.mark.parametrize(("every_s", "max_age_s"), [(0, 30), (-1, 30), (10, -1)])
def test_bad_sweep_settings_are_refused(every_s: float, max_age_s: float) -> None:
    with pytest.raises(ValueError, match="cache sweep"):
        CacheSweeper(fake_blocks(set()), every_s, max_age_s)
