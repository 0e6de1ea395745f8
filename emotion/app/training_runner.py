"""Run ``train_cli.py train`` as a child process for the app, and read its progress from the run folder.

The trainer runs in its own process group (so Stop also ends anything it started), and it yields to
live inference: it runs at a lower CPU priority and with half the cores' threads (``--threads``), so
the Live tab keeps its speed while it trains. Everything the app shows about a run
comes from files the trainer writes: ``status.json``, ``metrics.jsonl``, ``report/`` and the
captured console output, so a run looks the same whether it finished, crashed or was stopped.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..utils.runtime import cpu_cores, read_jsonl

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent.parent
TRAIN_CLI = REPO / "train_cli.py"
CONSOLE_LOG = "console.log"  # the child's stdout and stderr: its log lines, and any traceback or usage error
# While the process runs; "evaluating": training ended and the report is being written, "exiting": the trainer
# reported a failure and is on its way out, "stopping": Stop was pressed.
ACTIVE_STATES = ("starting", "embedding", "training", "evaluating", "exiting", "stopping")


@dataclass
class TrainRequest:
    """What the Training tab asks for; each field maps onto one ``train_cli.py train`` flag."""

    data: Path  # dataset folder (already checked to lie under the data root)
    model: str = "cnn"  # "cnn" or "clip"
    cnn_block: str = "plain"  # CNN only: "plain" or "residual" stages
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    clip_lr: float = 1e-5
    unfreeze_epoch: int = 10
    clip_weights: str | None = None  # weights file, "random", or None for the trainer's own resolution
    max_images: int = 0  # 0 = the whole training split

    def to_args(self, out: Path) -> list[str]:
        """Command-line arguments of ``train_cli.py`` for this request, writing into ``out``."""
        args = [
            "train",
            "--data",
            str(self.data),
            "--out",
            str(out),
            "--model",
            self.model,
            "--epochs",
            str(self.epochs),
            "--batch-size",
            str(self.batch_size),
            "--lr",
            repr(self.lr),
            "--clip-lr",
            repr(self.clip_lr),
            "--unfreeze-epoch",
            str(self.unfreeze_epoch),
            "--max-images",
            str(self.max_images),
        ]
        if self.model == "cnn":
            args += ["--cnn-block", self.cnn_block]
        if self.clip_weights:
            args += ["--clip-weights", self.clip_weights]
        return args


def _read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None while it is missing or being replaced."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def tail(path: Path, lines: int = 40, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a text file (reading at most ``max_bytes``); '' when it is missing."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    if size > max_bytes:
        data = data.partition(b"\n")[2]  # the first line was cut by the seek
    # tqdm-style carriage returns would otherwise pile up on one line.
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


class TrainingRun:
    """One training process and its run folder."""

    def __init__(self, run_dir: Path, process: subprocess.Popen):
        self.run_dir = run_dir
        self.process = process
        self.started = time.time()
        self.stopped_by_user = False

    @property
    def pid(self) -> int:
        """Process id of the trainer (also its process group id)."""
        return self.process.pid

    @property
    def running(self) -> bool:
        """Whether the trainer process is still alive."""
        return self.process.poll() is None

    @property
    def best_checkpoint(self) -> Path:
        """Where the trainer keeps the checkpoint with the best validation accuracy."""
        return self.run_dir / "best.pt"

    def status(self) -> dict:
        """The trainer's ``status.json`` (empty until it writes one)."""
        return _read_json(self.run_dir / "status.json") or {}

    def metrics(self) -> list[dict]:
        """One row per finished epoch, from ``metrics.jsonl``."""
        return read_jsonl(self.run_dir / "metrics.jsonl")

    def report(self) -> dict | None:
        """The final evaluation (``report/metrics.json``), once training has written it."""
        return _read_json(self.run_dir / "report" / "metrics.json")

    def log_tail(self, lines: int = 40) -> str:
        """The end of the trainer's console output."""
        return tail(self.run_dir / CONSOLE_LOG, lines)

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.time() - self.started

    def state(self) -> str:
        """One of ACTIVE_STATES while the process runs, then 'done', 'failed' or 'stopped'.

        The exit code is the authority once the process is gone: a killed trainer cannot update its
        status.json, and a trainer that crashed before writing one has none.
        """
        code = self.process.poll()
        if code is None:
            if self.stopped_by_user:
                return "stopping"
            state = self.status().get("state", "starting")
            return {"done": "evaluating", "failed": "exiting", "stopped": "exiting"}.get(state, state)
        if self.stopped_by_user:
            return "stopped"
        return "done" if code == 0 else "failed"

    def error(self) -> str | None:
        """Why a failed run failed, in the trainer's words when it said so."""
        if self.state() != "failed":
            return None
        message = self.status().get("error")
        if not message:
            # Crashed before status.json existed (e.g. a usage error): its last words are in the console log.
            lines = self.log_tail(5).splitlines()
            message = lines[-1] if lines else "no output"
        return f"{message} (exit code {self.process.returncode})"

    def stop(self, grace_s: float = 5.0) -> None:
        """End the trainer and everything it started: SIGTERM to its process group, SIGKILL after ``grace_s``."""
        if not self.running:
            return
        self.stopped_by_user = True
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=grace_s)
                break
            except subprocess.TimeoutExpired:
                log.warning("training process %d ignored SIGTERM for %.0fs; killing it", self.process.pid, grace_s)
        log.info("training run %s stopped", self.run_dir)


class PastRun(TrainingRun):
    """A run folder this app did not start (a command-line run, or one from an earlier session), read from
    its files alone: it can be watched, even while its trainer still runs, but not stopped from here."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.process = None
        self.stopped_by_user = False
        rows = self.metrics()
        # Wall time from the first epoch's start to the last epoch's end, as the trainer recorded them.
        self.started = rows[0]["time"] - rows[0].get("seconds", 0) if rows and "time" in rows[0] else time.time()

    @property
    def pid(self) -> int | None:
        """The trainer's process id as its status.json gives it."""
        pid = self.status().get("pid")
        return pid if isinstance(pid, int) else None

    @property
    def running(self) -> bool:
        """Whether the status says the run is active and its trainer process still exists."""
        if self.status().get("state") not in ACTIVE_STATES or self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True

    def log_tail(self, lines: int = 40) -> str:
        """The end of the trainer's log (``train.log`` for command-line runs)."""
        console = self.run_dir / CONSOLE_LOG
        return tail(console if console.is_file() else self.run_dir / "train.log", lines)

    def elapsed(self) -> float:
        """Seconds of training so far, from its first epoch's start to its last epoch's end (or now, while it runs)."""
        rows = self.metrics()
        end = time.time() if self.running or not rows else rows[-1].get("time", time.time())
        return max(0.0, end - self.started)

    def state(self) -> str:
        """The status file's state while its trainer runs; afterwards 'done', 'failed' or 'stopped' (an interrupted run)."""
        state = self.status().get("state", "stopped")
        if self.running:
            return state
        return state if state in ("done", "failed") else "stopped"

    def error(self) -> str | None:
        """Why a failed run failed, as its status.json says."""
        return self.status().get("error", "no error recorded") if self.state() == "failed" else None

    def stop(self, grace_s: float = 5.0) -> None:
        """Nothing: a run this app did not start is not this app's to stop."""


def _lower_priority(pid: int, nice: int) -> None:
    """Add ``nice`` to a new process's CPU niceness, and to its session's scheduling group on Linux.

    With autogroups (most Linux desktops), the scheduler first shares the CPU fairly between sessions and
    only then by niceness within one, so the trainer, in a session of its own, would still get half the
    CPU: measured 28 ms instead of 7 ms per live frame on a shared core (6.5 ms with its autogroup lowered too).
    """
    try:
        os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, pid) + nice)
    except OSError as exc:  # the process may already be gone; a crash is reported by state()
        log.debug("could not lower the trainer's priority: %s", exc)
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(min(19, nice)))
    except OSError as exc:  # no autogroups (not Linux, or turned off), or the process is gone
        log.debug("could not lower the trainer's autogroup priority: %s", exc)


class TrainingRunner:
    """Starts at most one training run at a time for the whole app, and remembers the latest one."""

    def __init__(self, runs_dir: Path, script: Path = TRAIN_CLI, nice: int = 10, threads: int = 0):
        self.runs_dir = Path(runs_dir)
        self.script = Path(script)
        self.nice = nice  # added to the trainer's CPU niceness so inference for live users comes first
        # The trainer's torch threads (0: half the cores, at least 1). Intra-op threads wait for each other at
        # every operation, so a trainer thread on every core would stall live inference however low its priority.
        self.threads = threads or max(1, cpu_cores() // 2)
        self._lock = threading.Lock()
        self.current: TrainingRun | None = None

    def _new_run_dir(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(100):
            run_dir = self.runs_dir / (f"ui-{stamp}" if n == 0 else f"ui-{stamp}-{n}")
            try:
                run_dir.mkdir(parents=True)
                return run_dir
            except FileExistsError:
                continue
        raise RuntimeError(f"could not create a new run folder in {self.runs_dir}")

    def start(self, request: TrainRequest) -> TrainingRun:
        """Launch a training run; raises RuntimeError while another one is still running."""
        with self._lock:
            if self.current is not None and self.current.running and not isinstance(self.current, PastRun):
                raise RuntimeError(
                    f"a training run is already in progress ({self.current.run_dir.name}); stop it first"
                )
            run_dir = self._new_run_dir()
            command = [sys.executable, str(self.script), *request.to_args(run_dir), "--threads", str(self.threads)]
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # log lines reach console.log as they happen
            with open(run_dir / CONSOLE_LOG, "wb") as console:
                process = subprocess.Popen(
                    command,
                    cwd=self.script.parent,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            if self.nice:
                _lower_priority(process.pid, self.nice)
            self.current = TrainingRun(run_dir, process)
            log.info("training run %s started (pid %d): %s", run_dir, process.pid, " ".join(command))
            return self.current

    def past_runs(self) -> list[str]:
        """Names of run folders in ``runs_dir`` that have metrics or a status, newest first."""
        if not self.runs_dir.is_dir():
            return []
        runs = [
            d
            for d in self.runs_dir.iterdir()
            if d.is_dir() and not d.is_symlink() and ((d / "metrics.jsonl").is_file() or (d / "status.json").is_file())
        ]
        return [d.name for d in sorted(runs, key=lambda d: d.stat().st_mtime, reverse=True)]

    def open_run(self, name: str) -> TrainingRun:
        """Show the run folder ``name`` (one of ``past_runs()``) as the current run; refused while a run of this app trains."""
        with self._lock:
            if self.current is not None and self.current.running and not isinstance(self.current, PastRun):
                raise RuntimeError(
                    f"a training run is in progress ({self.current.run_dir.name}); its progress is shown until it ends"
                )
            if name not in self.past_runs():  # only names listed here, so no path from a request is ever opened
                raise ValueError(f"no run named {name!r} in {self.runs_dir}")
            self.current = PastRun(self.runs_dir / name)
            return self.current

    def stop(self) -> None:
        """Stop the current run, if any is running."""
        run = self.current
        if run is not None:
            run.stop()
