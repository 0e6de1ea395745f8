"""Training settings (``TrainConfig``), their validation, and the run folder's claim.

The CLI and the app's Training tab build a ``TrainConfig``, call ``check()`` before anything starts,
and ``claim_run_folder`` refuses to mix a new run into an old one unless ``resume`` or ``overwrite``
says so.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.augment import AugmentConfig
from ..models.checkpoint import MAX_MEMBERS, check_model_config
from ..models.networks import ModelConfig

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """A training run; the defaults are the seed's recipe for the CLIP model."""

    data: str = "../shared/fer2013"  # dataset folder (train/ and test/ class folders) or fer2013.csv
    out: str = "runs/emotion"  # run folder for checkpoints, metrics and logs
    model: ModelConfig = field(default_factory=ModelConfig)  # architecture
    epochs: int = 20  # total epochs (the seed's 20)
    batch_size: int = 64  # images per step per process
    lr: float = 1e-3  # learning rate of the adapter (CLIP) or the whole network (CNN)
    clip_lr: float = 1e-5  # learning rate of the unfrozen CLIP blocks
    weight_decay: float = 0.05  # AdamW decoupled weight decay (never on biases or norm weights)
    warmup_epochs: float = 1.0  # linear warmup before the cosine decay
    min_lr_ratio: float = 0.01  # cosine floor, as a fraction of each group's learning rate
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    ema_decay: float = 0.0  # >0: validate and ship an exponential moving average of the weights (e.g. 0.999)
    unfreeze_epoch: int = 10  # first (1-based) epoch in which CLIP's last blocks train; 0 = never frozen
    unfreeze_blocks: int = 4  # CLIP transformer blocks unfrozen then, plus the final norm and projection
    embedding_cache: bool = True  # while CLIP is frozen, embed every image once and train the adapter on that
    cache_flip: bool = (
        False  # also cache mirrored images and pick a view at random (flip augmentation, 2x the caching cost)
    )
    val_split: float = 0.0  # >0: carve this fraction of train for validation instead of using the test split
    val_name: str = "test"  # split used for validation when val_split is 0
    seed: int = 0  # seeds shuffling, augmentation, initialisation and (unless split_seed) the val split
    split_seed: int | None = (
        None  # seeds the val split alone; give an ensemble's networks one, so all hold out the same faces
    )
    amp: str = "auto"  # "auto": fp16 on CUDA, bf16 on CPUs with native bf16; "bf16", "fp16" or "off"
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    threads: int = 0  # CPU threads for torch; 0 = one per core (1 is steadier on a busy machine)
    clip_weights: str | None = None  # CLIP weights file, or "random"; None resolves the pretrained tag
    cache_dir: str | None = None  # open_clip weights cache
    data_cache: str | None = None  # where decoded datasets are cached (default ~/.cache/emotion)
    max_images: int = 0  # >0: train on at most this many images (quick trials and benchmarks)
    resume: bool = False  # continue from out/last.pt
    overwrite: bool = (
        False  # start over in an out folder that already holds a run (its checkpoints and metrics are removed)
    )
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training augmentation
    detector_framings: list[str] = field(
        default_factory=list
    )  # framings files (scripts/measure_detector_framings.py) that augment.detector_framing draws from
    teacher: str | None = (
        None  # checkpoint whose predictions the network also learns to match (distillation); None = off
    )
    distill_weight: float = 0.5  # with a teacher: share of the loss spent matching it, the rest on the labels
    distill_temperature: float = 2.0  # with a teacher: softens both distributions so the runner-up classes teach too
    teacher_cache: bool = (
        False  # with a teacher: predict each training face once (face and mirror) instead of every augmented batch
    )
    init_from: str | None = (
        None  # checkpoint whose weights the network starts from (fine-tuning); None = random initialisation
    )
    init_member: int = 1  # with init_from: which network of an ensemble file to start from (1-based, in file order)
    init_held_out: list | None = None  # recorded by the trainer, not set: [val_split, split seed] when the init_from
    # network held out this run's own carve-out too, so that the carve-out stays unseen (see unseen_split)
    teacher_held_out: list | None = None  # recorded by the trainer, not set: [val_split, split seed] when every
    # network of the teacher held out this run's own carve-out too (its predictions then carry nothing of it)
    log_every: float = 2.0  # seconds between status.json updates

    @classmethod
    def for_model(cls, kind: str, **overrides) -> TrainConfig:
        """The recipe for ``kind`` ("clip": the seed's; "cnn": the one that trained the shipped model), then ``overrides``."""
        base = {"model": ModelConfig(kind=kind)}
        if kind == "cnn":
            base.update(
                epochs=26,
                lr=2e-3,
                ema_decay=0.999,
                model=ModelConfig(kind="cnn", dropout=0.2, cnn_widths=(48, 96, 192, 384)),
            )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def check(self) -> None:
        """Refuse NaN, infinite, negative or absurd settings (ConfigError naming the setting and its range).

        The CLI and the app's Training tab both call this before anything is started or written.
        """

        def number(
            name: str,
            label: str,
            low: float,
            high: float,
            *,
            low_open: bool = False,
            whole: bool = False,
            owner: object = self,
        ) -> None:
            value = getattr(owner, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value > low if low_open else value >= low) and value <= high
            if whole:
                ok = ok and float(value).is_integer()
            if not ok:
                kind = "a whole number" if whole else "a number"
                raise ConfigError(
                    f"{label} must be {kind} {'above' if low_open else 'at least'} {low:g} "
                    f"and at most {high:g}, got {value!r}"
                )

        number("epochs", "epochs (--epochs)", 1, 10_000, whole=True)
        number("batch_size", "batch size (--batch-size)", 1, 65_536, whole=True)
        number("lr", "learning rate (--lr)", 0, 1.0, low_open=True)
        number("clip_lr", "CLIP learning rate (--clip-lr)", 0, 1.0, low_open=True)
        number("weight_decay", "weight decay (--weight-decay)", 0, 1.0)
        number(
            "warmup_epochs", "warmup epochs (--warmup-epochs)", 0, self.epochs if isinstance(self.epochs, int) else 0
        )
        number("min_lr_ratio", "minimum learning-rate ratio", 0, 1.0)
        number("label_smoothing", "label smoothing (--label-smoothing)", 0, 0.99)
        number("ema_decay", "EMA decay (--ema-decay)", 0, 0.99999)
        number("unfreeze_epoch", "unfreeze epoch (--unfreeze-epoch)", 0, 10_000, whole=True)
        number("unfreeze_blocks", "unfrozen CLIP blocks (--unfreeze-blocks)", 0, 1_000, whole=True)
        number("val_split", "validation split (--val-split)", 0, 0.9)
        number("threads", "threads (--threads)", 0, 1_024, whole=True)
        number("max_images", "max images (--max-images)", 0, 1e9, whole=True)
        number("log_every", "status interval", 0, 3600, low_open=True)
        number("mixup", "mixup alpha (--mixup)", 0, 100, owner=self.augment)
        number("cutmix", "CutMix alpha (--cutmix)", 0, 100, owner=self.augment)
        number("mix_prob", "mix probability (--mix-prob)", 0, 1.0, owner=self.augment)
        number("frame_jitter", "frame jitter share (--frame-jitter)", 0, 1.0, owner=self.augment)
        number("surround", "foreign surroundings share (--surround)", 0, 1.0, owner=self.augment)
        number("detector_framing", "detector framing share (--detector-framing)", 0, 1.0, owner=self.augment)
        self._check_detector_framings()
        if self.split_seed is not None:
            number("split_seed", "split seed (--split-seed)", 0, 2**63 - 1, whole=True)
        number("distill_weight", "distillation weight (--distill-weight)", 0, 1.0)
        number("distill_temperature", "distillation temperature (--distill-temperature)", 0, 100, low_open=True)
        if self.teacher is not None and not Path(self.teacher).is_file():
            raise ConfigError(f"--teacher: no checkpoint at {self.teacher}; give a .pt file written by train or ship")
        if self.teacher_cache and self.teacher is None:
            raise ConfigError("--teacher-cache caches a teacher's predictions: add --teacher CHECKPOINT")
        if self.teacher is not None and self.model.kind == "clip" and self.embedding_cache and self.unfreeze_epoch != 0:
            raise ConfigError(
                "a teacher needs the faces at every step: add --no-embedding-cache (or --unfreeze-epoch 0)"
            )
        number("init_member", "initial network (--init-member)", 1, MAX_MEMBERS, whole=True)
        if self.init_from is not None and not Path(self.init_from).is_file():
            raise ConfigError(
                f"--init-from: no checkpoint at {self.init_from}; give a .pt file written by train or ship"
            )
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: use one")
        try:
            check_model_config(self.model)
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from exc
        if self.model.members != 1:
            raise ConfigError(
                "the trainer trains one network at a time: train each with its own --seed, then "
                "combine them with `train_cli.py ship RUN1/best.pt RUN2/best.pt ...`"
            )

    def _check_detector_framings(self) -> None:
        """ConfigError when ``--detector-framing`` has no framings files or one of them is missing."""
        if self.augment.detector_framing > 0 and not self.detector_framings:
            raise ConfigError("--detector-framing needs the faces' recorded framings: add --detector-framings FILE")
        for path in self.detector_framings:
            if not Path(path).is_file():
                raise ConfigError(
                    f"--detector-framings: no file at {path}; make one with scripts/measure_detector_framings.py"
                )

    @property
    def val_split_seed(self) -> int:
        """The seed of the validation carve-out: ``split_seed``, else ``seed``."""
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict:
        """JSON form stored in checkpoints."""
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


class ConfigError(ValueError):
    """A training setting is out of range (NaN, infinite, negative or absurd); the message names it."""


class RunExistsError(ValueError):
    """The run folder already holds a run, and neither resume nor overwrite was asked for."""


RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl")  # a folder holding any of these holds a run's work
RESTART_FILES = (
    *RUN_FILES,
    "embeddings.pt",
    "teacher_targets.pt",
    "status.json",
)  # removed by --overwrite so nothing stale survives


def claim_run_folder(cfg: TrainConfig, main: bool = True) -> None:
    """Refuse (RunExistsError) to train into a folder holding a run unless ``resume`` or ``overwrite`` says so.

    With ``overwrite`` the old run's checkpoints, metrics and status are removed first (by the main process).
    """
    out = Path(cfg.out)
    found = [name for name in RUN_FILES if (out / name).is_file() and (out / name).stat().st_size > 0]
    if not found or cfg.resume:
        return
    if not cfg.overwrite:
        raise RunExistsError(
            f"{out} already holds a training run ({', '.join(found)}): pass --resume to continue it, "
            "--overwrite to start over in it, or choose another --out"
        )
    if main:
        log.warning("--overwrite: removing the previous run's %s from %s", ", ".join(found), out)
        for name in RESTART_FILES:
            (out / name).unlink(missing_ok=True)
