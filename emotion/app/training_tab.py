"""The Training tab: start and stop a training run, follow its curves, log and progress, use its model.

Every path typed or picked here is resolved and must stay under the app's data root, so the
server never reads files elsewhere on its behalf.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from ..data.labels import CLASS_NAMES, display
from ..data.splits import has_split
from ..training.config import TrainConfig
from .config import AppConfig
from .model_panel import ModelManager, ModelPanel, refresh_choices, switch_model
from .training_runner import ACTIVE_STATES, PastRun, TrainingRun, TrainingRunner, TrainRequest

log = logging.getLogger(__name__)

POLL_S = 1.5  # how often an open Training tab refreshes while a run is active
# Values: the trainer's --model, plus -<cnn block> for a CNN whose stages are not plain.
MODEL_CHOICES = [
    ("Compact CNN (offline)", "cnn"),
    ("Residual CNN with squeeze-excitation (offline)", "cnn-residual"),
    ("CLIP + adapter", "clip"),
]
METRIC_COLUMNS = ["class", "precision", "recall", "f1", "support"]


def _under(root: Path, name: str, what: str) -> Path:
    """``root / name`` resolved, refused (ValueError) when it escapes ``root`` (``..``, absolute paths, symlinks)."""
    root = root.resolve()
    path = (root / name.strip()).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"The {what} must be inside the data root {root}; “{name}” is not.")
    return path


def list_datasets(root: Path) -> list[str]:
    """Folders under ``root`` (itself, children, grandchildren) that hold a training split, relative to it.

    Symlinks leading out of ``root`` are left out: resolve_dataset would refuse them.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        return []
    candidates = [root, *sorted(root.glob("*")), *sorted(root.glob("*/*"))]
    return [
        str(p.relative_to(root))
        for p in candidates
        if p.is_dir() and p.resolve().is_relative_to(root) and has_split(p, "train")
    ]


def resolve_dataset(root: Path, name: str | None) -> Path:
    """The dataset folder ``name`` (relative to ``root``), checked; raises ValueError with a readable reason."""
    if not name or not name.strip():
        raise ValueError("Choose a dataset folder first.")
    path = _under(root, name, "dataset folder")
    if not path.is_dir():
        raise ValueError(f"The dataset folder “{name}” does not exist under the data root {root}.")
    if not has_split(path, "train"):
        raise ValueError(
            f"“{name}” has no train/ folder of class folders ({', '.join(CLASS_NAMES)}) and no fer2013.csv."
        )
    return path


def resolve_clip_weights(root: Path, value: str | None) -> str | None:
    """The CLIP weights argument: None (the trainer's own lookup), 'random', or a file under ``root``."""
    value = (value or "").strip()
    if not value or value == "random":
        return value or None
    path = _under(root, value, "CLIP weights file")
    if not path.is_file():
        raise ValueError(f"The CLIP weights file “{value}” does not exist under the data root {root}.")
    return str(path)


def start_training(
    runner: TrainingRunner,
    data_root: Path,
    dataset: str | None,
    model: str,
    epochs: float,
    batch_size: float,
    lr: float,
    clip_lr: float,
    unfreeze_epoch: float,
    clip_weights: str | None,
    max_images: float,
) -> tuple[str, gr.Timer]:
    """Start button: validate the form and launch a run; returns (status message, timer update).

    The numbers go through the same check as ``train_cli.py train`` (``TrainConfig.check``), so NaN,
    infinite, negative or absurd values are refused here with the trainer's own message.
    """
    try:
        if model not in {value for _, value in MODEL_CHOICES}:
            raise ValueError(f"Unknown model {model!r}: choose one of the listed models.")
        numbers = {
            "epochs": _whole(epochs, "Epochs"),
            "batch_size": _whole(batch_size, "Batch size"),
            "lr": _number(lr, "Learning rate"),
            "clip_lr": _number(clip_lr, "CLIP learning rate"),
            "unfreeze_epoch": _whole(unfreeze_epoch, "Unfreeze epoch"),
            "max_images": _whole(max_images or 0, "Max training images"),
        }
        kind, _, block = model.partition("-")
        TrainConfig.for_model(kind, **numbers).check()
        request = TrainRequest(
            data=resolve_dataset(data_root, dataset),
            model=kind,
            cnn_block=block or "plain",
            clip_weights=resolve_clip_weights(data_root, clip_weights),
            **numbers,
        )
        run = runner.start(request)
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        log.info("training not started: %s", exc)
        gr.Warning(str(exc))
        return f"⚠️ {exc}", gr.Timer(active=False)
    return f"Started **{run.run_dir.name}** …", gr.Timer(active=True)


def _number(value: object, label: str) -> float:
    """A form number as float; ValueError naming the field for empty or non-numeric input (NaN and inf pass to the check)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be a number, got {value!r}.") from None


def _whole(value: object, label: str) -> int | float:
    """A form number that must be whole: an int when it is one, else the float itself so the check names it."""
    number = _number(value, label)
    return int(number) if number.is_integer() else number


def stop_training(runner: TrainingRunner) -> str:
    """Stop button: end the current run (SIGTERM, then SIGKILL)."""
    run = runner.current
    if run is None or not run.running:
        return "No training run is in progress."
    if isinstance(run, PastRun):
        return f"**{run.run_dir.name}** was not started from this tab; stop it where it runs (Ctrl+C in its terminal)."
    run.stop()
    return f"Stopped **{run.run_dir.name}**."


def show_run(runner: TrainingRunner, name: str | None) -> tuple[str, gr.Timer]:
    """'Show run' button: follow an earlier or command-line run folder (curves, log, report) like a run started here."""
    try:
        run = runner.open_run(name or "")
    except (ValueError, RuntimeError) as exc:
        gr.Warning(str(exc))
        return f"⚠️ {exc}", gr.Timer(active=False)
    return f"Showing **{run.run_dir.name}** …", gr.Timer(active=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def progress_text(run: TrainingRun) -> str:
    """One line on where a run stands: state, epoch, step and overall progress, or its error."""
    state = run.state()
    status = run.status()
    if state == "failed":
        error = run.error()
        # The trainer speaks in command-line flags; say where the same setting is in this form.
        hint = (
            " In this form: fill in **CLIP weights file** (a file under the data root), or `random` to try the model out."
            if "CLIP" in error and "weights" in error
            else ""
        )
        return f"❌ **Training failed** ({run.run_dir.name}): {error}{hint}"
    if state == "stopped":
        return f"⏹ **Stopped** ({run.run_dir.name}) in epoch {status.get('epoch', 0)}/{status.get('epochs', '?')}."
    if state == "done":
        epochs = status.get("epochs", "?")
        return f"✅ **Done** ({run.run_dir.name}): {epochs} epoch{'' if epochs == 1 else 's'} in {_duration(run.elapsed())}."
    epoch, epochs = status.get("epoch", 0), status.get("epochs", 0)
    step, steps = status.get("step", 0), status.get("steps_per_epoch", 0)
    text = f"⏳ **{state.capitalize()}** ({run.run_dir.name}) · {_duration(run.elapsed())}"
    if epochs and steps:
        done = ((max(epoch, 1) - 1) * steps + step) / (epochs * steps)
        text += f" · epoch {epoch}/{epochs}, step {step}/{steps} · {done:.0%}"
    elif epochs:
        text += f" · epoch {epoch}/{epochs}"
    return text


def curves_figure(rows: list[dict]) -> Figure:
    """Loss and accuracy per epoch, train and validation; points are marked so one epoch already shows."""
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    for ax, key, title in ((loss_ax, "loss", "Loss"), (acc_ax, "acc", "Accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], "o-", label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in rows], "s-", label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if epochs:
        for ax in (loss_ax, acc_ax):
            ax.set_xticks(range(1, max(epochs) + 1))
    return fig


def report_outputs(run: TrainingRun) -> tuple[str, pd.DataFrame | None, np.ndarray | None]:
    """(summary, per-class table, confusion-matrix image) from a finished run's report, or blanks."""
    report = run.report()
    if not report:
        return "", None, None
    summary = (
        f"**Validation accuracy {report.get('accuracy', 0):.1%}** · macro F1 {report.get('macro_f1', 0):.3f} · "
        f"weighted F1 {report.get('weighted_f1', 0):.3f} · best checkpoint `{run.best_checkpoint}`"
    )
    per_class = report.get("per_class", {})
    table = pd.DataFrame(
        [
            [display(c), round(m["precision"], 3), round(m["recall"], 3), round(m["f1"], 3), int(m["support"])]
            for c, m in per_class.items()
        ],
        columns=METRIC_COLUMNS,
    )
    # Pixels rather than a path: Gradio only serves files from its own allowed folders, which need not include runs/.
    try:
        with Image.open(run.run_dir / "report" / "confusion_matrix.png") as im:
            image = np.asarray(im.convert("RGB"))
    except OSError:
        image = None
    return summary, table, image


def poll_training(runner: TrainingRunner, seen: tuple | None) -> tuple:
    """Timer tick: (progress, curves, log, report summary, table, confusion image, use-button, timer, seen).

    ``seen`` is this session's last-drawn (run, epochs, state): the figure and report are only
    rebuilt and sent when they changed, which keeps a 1.5 s poll cheap for server and browser.
    """
    run = runner.current
    if run is None:
        return (
            "No training run yet.",
            gr.skip(),
            "",
            gr.skip(),
            gr.skip(),
            gr.skip(),
            gr.Button(visible=False),
            gr.Timer(active=False),
            seen,
        )
    state = run.state()
    rows = run.metrics()
    key = (str(run.run_dir), len(rows), state)
    changed = key != seen
    active = state in ACTIVE_STATES
    figure = curves_figure(rows) if changed and rows else (None if changed else gr.skip())
    summary, table, image = report_outputs(run) if changed else (gr.skip(), gr.skip(), gr.skip())
    usable = not active and run.best_checkpoint.is_file()
    return (
        progress_text(run),
        figure,
        run.log_tail(),
        summary,
        table,
        image,
        gr.Button(visible=usable),
        gr.Timer(active=active),
        key,
    )


def use_trained_model(runner: TrainingRunner, models: ModelManager) -> tuple[str, gr.Dropdown]:
    """'Use this model' button: make the latest run's best.pt the live model."""
    run = runner.current
    if run is None or not run.best_checkpoint.is_file():
        gr.Warning("This run has no best.pt yet.")
        return models.describe(), refresh_choices(models)
    return switch_model(models, str(run.best_checkpoint))


def _form_rows(datasets: list[str]) -> list[gr.components.Component]:
    """The form's two rows of inputs, returned in ``start_training``'s parameter order (not their screen order)."""
    with gr.Row():
        dataset = gr.Dropdown(
            choices=datasets,
            value=datasets[0] if datasets else None,
            allow_custom_value=True,
            label="Dataset folder",
            info="relative to the data root",
            elem_id="train-dataset",
        )
        model = gr.Radio(MODEL_CHOICES, value="cnn", label="Model")
        clip_weights = gr.Textbox(
            label="CLIP weights file",
            placeholder="under the data root, or 'random'",
            info="CLIP only: pretrained weights cannot be downloaded offline",
        )
    with gr.Row():
        epochs = gr.Number(10, label="Epochs", precision=0, minimum=1)
        batch_size = gr.Number(64, label="Batch size", precision=0, minimum=1)
        lr = gr.Number(1e-3, label="Learning rate", minimum=0)
        clip_lr = gr.Number(1e-5, label="CLIP learning rate", minimum=0)
        unfreeze = gr.Number(10, label="Unfreeze CLIP at epoch", precision=0, minimum=0)
        max_images = gr.Number(0, label="Max training images (0 = all)", precision=0, minimum=0)
    return [dataset, model, epochs, batch_size, lr, clip_lr, unfreeze, clip_weights, max_images]


def build_training_tab(runner: TrainingRunner, models: ModelManager, panel: ModelPanel, config: AppConfig) -> None:
    """The Training tab: form, live progress and final report."""
    root = Path(config.data_root)
    datasets = list_datasets(root)
    with gr.Tab("Training", id="training") as tab:
        gr.Markdown(
            f"Datasets are folders under the data root `{root.resolve()}` with `train/` (and `test/`) class "
            "folders, or a `fer2013.csv`. Training runs as a separate process; its files go to `runs/ui-<time>/`."
        )
        form = _form_rows(datasets)
        with gr.Row():
            start = gr.Button("Start training", variant="primary", elem_id="train-start")
            stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
        with gr.Row():
            past = gr.Dropdown(
                choices=runner.past_runs(),
                value=None,
                label="Earlier runs",
                scale=4,
                elem_id="train-runs",
                info="run folders in runs/, from this tab, earlier sessions or the command line",
            )
            show = gr.Button("Show run", scale=1, elem_id="train-show")
        progress = gr.Markdown("No training run yet.", elem_id="train-progress")
        curves = gr.Plot(label="Training curves", elem_id="train-curves")
        log_box = gr.Textbox(
            label="Training log (tail)", lines=10, max_lines=10, autoscroll=True, interactive=False, elem_id="train-log"
        )
        summary = gr.Markdown(elem_id="train-summary")
        with gr.Row():
            table = gr.Dataframe(headers=METRIC_COLUMNS, label="Per-class metrics (validation)", interactive=False)
            confusion = gr.Image(label="Confusion matrix", interactive=False, elem_id="train-confusion")
        use = gr.Button("Use this model for Live and Upload", visible=False, variant="primary", elem_id="train-use")

    timer = gr.Timer(POLL_S, active=False)
    seen = gr.State(None)
    poll_outputs = [progress, curves, log_box, summary, table, confusion, use, timer, seen]

    def on_start(*form):
        return start_training(runner, root, *form)

    def on_poll(last_seen):
        return poll_training(runner, last_seen)

    start.click(on_start, inputs=form, outputs=[progress, timer], api_visibility="private")
    stop.click(lambda: stop_training(runner), outputs=progress, api_visibility="private")
    show.click(lambda name: show_run(runner, name), inputs=past, outputs=[progress, timer], api_visibility="private")
    tab.select(lambda: gr.Dropdown(choices=runner.past_runs()), outputs=past, api_visibility="private")
    # Opening the tab picks up a run already in progress (or shows the last one); the timer then follows it.
    gr.on(
        [timer.tick, tab.select],
        on_poll,
        inputs=seen,
        outputs=poll_outputs,
        show_progress="hidden",
        api_visibility="private",
    )
    use.click(lambda: use_trained_model(runner, models), outputs=[panel.info, panel.choice], api_visibility="private")
