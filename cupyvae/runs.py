"""The run folder: everything about one training run, and the only code that reads or writes one.

    config.json              what the run is: the model config, the training options, the run
                             options (data, limit, device, execution), the dataset's size and
                             the command that repeats the run
    checkpoint.safetensors   model + optimizer + history, rewritten atomically every epoch
    checkpoint.best.safetensors  with --patience: the epoch with the lowest validation loss
    metrics.csv              one row per epoch: every column of the history (rewritten every epoch)
    *.png                    the plots (cupyvae.plots.PLOT_FILES)
    evaluation.json          written by `evaluate`
    samples-<n>.png          written by `sample` unless it is given another file
    .cupyvae.lock            locked (fcntl.flock) by the process that trains the run; never removed

Every file is written through cupyvae.files.write_atomic, and every file is validated when
it is read: config.json by the same frozen dataclasses the API uses (VAEConfig,
TrainingOptions, RunOptions), so a hand-edited `"limit": -5990` or `"binarize": "no"` is
refused naming the field, and the checkpoint by cupyvae.checkpoint.  A killed run leaves at
most a temporary file behind, which the next run in the folder removes.  One process at a time
trains a run folder: start_run and resume_run take its lock (RunLock), and Run.train releases
it; a second process is refused with RunInUse before any work.

The files a command writes where the user says (sample -o, encode -o, explore --save) pass
check_output_path: the suffix its writer needs, a folder that exists, and never one of
cupyvae's own files inside a run folder.

The CLI (cupyvae.cli) only parses the command line and calls these functions:

    run = start_run(folder, model_options, TrainingOptions(...), RunOptions(data="mnist"))
    run.train(reporter)                 # Ctrl-C / SIGTERM: RunInterrupted names the saved epoch
    evaluate_run(folder, device="cpu", iw_samples=100)
    encode_run(folder, "codes.csv")     # posterior means (labels too, where the data have them)

Long passes report to a cupyvae.progress.Reporter (the CLI's draws progress bars).
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from . import __version__
from .checkpoint import CheckpointError, load_checkpoint
from .config import VAEConfig
from .csvdata import csv_reference, is_csv_reference, parse_csv_reference
from .datasets import Dataset, available_datasets, load_dataset
from .executors import EXECUTORS, binarize_batch
from .files import JSONError, parse_json, write_atomic, write_json
from .model import (VAE, TrainingDiverged, best_checkpoint_path, check_binarizable, kept_epoch,
                    load)
from .objectives import objective_for
from .progress import Reporter
from .options import (Check, ValidatedOptions, cli_fields, nonnegative_int, one_of, option,
                      optional, positive_int)
from .spec import ModelSpec
from .threads import default_threads
from .training import (TrainingOptions, best_epoch, check_data_sizes, data_digest, split_digest,
                       split_validation, stopped_early)

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
BEST_CHECKPOINT_FILE = best_checkpoint_path(CHECKPOINT_FILE).name
CHECKPOINTS = ("best", "last")   # which checkpoint the commands that use a trained run load
METRICS_FILE = "metrics.csv"
EVALUATION_FILE = "evaluation.json"
LOCK_FILE = ".cupyvae.lock"
RUN_FORMAT = 2          # config.json layout; format 1 (no "run" section) is still read
DEFAULT_DATA = "fashion-mnist"
EXECUTIONS = ("auto", "eager", "graph")


class RunError(ValueError):
    """A problem with a run folder that the user can fix; the message says how."""


class RunInUse(RunError):
    """Another process holds the run folder's lock (it is training the run)."""


class RunInterrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM; `message` names the epoch the checkpoint holds."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _data_reference(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a dataset name or the path of a .npy/.npz/.csv file")
    return value


def device_choices() -> list[str]:
    """What --device accepts (train's RunOptions.device and the other commands alike)."""
    return ["auto", *EXECUTORS.names()]


@dataclass(frozen=True)
class RunOptions(ValidatedOptions):
    """Where a run's data come from and where it computes; not part of the model or of
    `fit`.  `device` and `execution` may change when a run is resumed."""
    owner = "run option"

    data: str = option(DEFAULT_DATA, Check("must be a dataset name or a .npy/.npz/.csv path",
                                           _data_reference, lambda: click.STRING),
                       "Dataset name, or a .npy/.npz file, or a .csv file (FILE.csv#label=COLUMN "
                       "names its label column).  Training uses its train split; its test "
                       "split is the validation set unless --val-fraction is given.")
    limit: int | None = option(None, optional(positive_int),
                               "Use only the first N training examples (for quick runs).")
    device: str = option("auto", one_of(device_choices),
                         "Where to train; auto picks cuda when a GPU is usable, else cpu.")
    execution: str = option("auto", one_of(EXECUTIONS),
                            "Kernel devices only: replay each training step from a CUDA graph, "
                            "or launch eagerly; auto is graph on cuda.  Both give the same numbers.")

    @property
    def execution_mode(self) -> str | None:
        """None lets the device choose (graph on cuda, eager elsewhere)."""
        return None if self.execution == "auto" else self.execution


# Options that a resumed run may change; every other option is the run's for life.
RESUMABLE_OPTIONS = ("epochs", "patience", "device", "execution")


@dataclass(frozen=True)
class RunConfig:
    """The validated content of config.json."""
    model: VAEConfig
    training: TrainingOptions
    run: RunOptions
    dataset: dict
    version: str = __version__
    device_used: str | None = None     # what run.device ("auto") resolved to, last time

    def to_dict(self, folder: Path) -> dict:
        content = {"format": RUN_FORMAT, "cupyvae_version": self.version,
                   "model": self.model.to_dict(), "training": self.training.to_dict(),
                   "run": self.run.to_dict(), "dataset": self.dataset}
        if self.device_used is not None:
            content["device_used"] = self.device_used
        content["command"] = rerun_command(self, folder)
        return content

    def write(self, folder: Path) -> None:
        write_json(folder / CONFIG_FILE, self.to_dict(folder))


# ---------------------------------------------------------------------- reading
def read_config(folder: Path) -> RunConfig:
    """config.json of `folder`, validated field by field (RunError names file and field)."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise RunError(f"run folder {folder} does not exist")
    if not path.is_file():
        raise RunError(f"{folder} is not a cupyvae run folder (no {CONFIG_FILE})")
    try:
        content = parse_json(path.read_bytes())
    except OSError as exc:
        raise RunError(f"{path} is damaged ({type(exc).__name__}: {exc})") from None
    except JSONError as exc:
        raise RunError(f"{path} is damaged ({exc})") from None
    if not isinstance(content, dict):
        raise RunError(f"{path} is damaged: not a JSON object")
    _refuse_unknown_format(path, content.get("format", 1))
    content = _upgrade_format_1(content)
    try:
        return RunConfig(model=VAEConfig.from_dict(content.get("model"), "model"),
                         training=TrainingOptions.from_dict(content.get("training"), "training"),
                         run=RunOptions.from_dict(content.get("run"), "run"),
                         dataset=_dataset_section(content.get("dataset")),
                         version=str(content.get("cupyvae_version", "unknown")),
                         device_used=_device_used(content.get("device_used")))
    except ValueError as exc:
        raise RunError(f"{path} is invalid: {exc}") from None


def _upgrade_format_1(content: dict) -> dict:
    """Format 1 kept data, limit and device in the training section."""
    if "run" in content or not isinstance(content.get("training"), dict):
        return content
    training = dict(content["training"])
    run = {key: training.pop(key) for key in ("data", "limit", "device") if key in training}
    return {**content, "training": training, "run": run}


def _refuse_unknown_format(path: Path, fmt) -> None:
    """Format 1 wrote no "format" key; a format this version does not know is refused
    rather than misread."""
    if type(fmt) is not int or not 1 <= fmt <= RUN_FORMAT:
        raise RunError(f"{path} has format {fmt!r}; this cupyvae ({__version__}) reads run "
                       f"folders of format 1 to {RUN_FORMAT} (a newer cupyvae wrote it?)")


def _text(value) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _sha256(value) -> str:
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise ValueError("must be a SHA-256 digest (64 lowercase hex digits)")
    return value


# config.json's dataset section: what the run trained and validated on (required keys
# first; runs started before the digests existed lack the optional ones).
DATASET_KEYS = {"name": Check("", _text), "train_examples": positive_int,
                "validation": Check("", _text), "validation_examples": nonnegative_int}
OPTIONAL_DATASET_KEYS = {"split_seed": nonnegative_int, "validation_rows_sha256": Check("", _sha256),
                         "train_sha256": Check("", _sha256), "validation_sha256": Check("", _sha256)}


def _device_used(value) -> str | None:
    if value is not None and value not in EXECUTORS.names():
        raise ValueError(f"device_used = {value!r}: must be one of {', '.join(EXECUTORS.names())}")
    return value


def _dataset_section(section) -> dict:
    """The dataset section, each key checked (ValueError naming the key)."""
    if not isinstance(section, dict):
        raise ValueError(f"dataset must be a JSON object, got {section!r}")
    known = {**DATASET_KEYS, **OPTIONAL_DATASET_KEYS}
    unknown = sorted(set(section) - set(known))
    missing = [key for key in DATASET_KEYS if key not in section]
    if unknown or missing:
        raise ValueError(f"dataset: {'unknown keys ' + str(unknown) if unknown else ''}"
                         f"{'; ' if unknown and missing else ''}"
                         f"{'missing keys ' + str(missing) if missing else ''}")
    checked = {}
    for key, value in section.items():
        try:
            checked[key] = known[key].accept(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"dataset {key} = {value!r}: {exc}") from None
    return checked


def load_run(folder: Path, device: str = "auto", execution: str | None = None,
             checkpoint: str = "last") -> tuple[RunConfig, VAE]:
    """config.json and the model of a checkpoint, which must belong to it.

    checkpoint: "last" (the latest epoch, what --resume continues) or "best" (the epoch
    with the lowest validation loss, kept when training with patience; the last where the
    run kept none)."""
    folder = Path(folder)
    config = read_config(folder)
    path = checkpoint_path(folder, checkpoint)
    model = load(path, device=device, execution=execution)
    if model.config != config.model:
        stored, saved = config.model.to_dict(), model.config.to_dict()
        differences = "; ".join(f"{name} {shown(stored[name])} in {CONFIG_FILE}, "
                                f"{shown(saved[name])} in the checkpoint"
                                for name in stored if stored[name] != saved[name])
        raise RunError(f"{path} does not belong to {folder / CONFIG_FILE}: their model configs "
                       f"differ ({differences})")
    return config, model


def checkpoint_path(folder: Path, checkpoint: str = "last") -> Path:
    """The file of checkpoint "last" or "best" (see load_run).  RunError when the best
    file does not hold the best epoch of the last checkpoint's history (a run resumed
    without --patience, say, trained past it), or when a run trained with patience lost
    it (missing, or not a file) while its best epoch is not the last: the last checkpoint
    is then not the best model, and silently using it would mislead."""
    if checkpoint not in CHECKPOINTS:
        raise RunError(f"checkpoint {checkpoint!r}: choose one of {', '.join(CHECKPOINTS)}")
    best, last = Path(folder) / BEST_CHECKPOINT_FILE, Path(folder) / CHECKPOINT_FILE
    if checkpoint == "last":
        return last
    if not best.is_file():
        _refuse_lost_best(Path(folder), last)
        return last
    history = _checkpoint_history(last)
    wanted = None if history is None else best_epoch(history)
    kept = kept_epoch(best)
    if wanted is not None and kept != wanted:
        held = f"epoch {kept[0]}" if kept else "no readable epoch"
        raise RunError(f"{best} holds {held}, but the best validation loss of {last} is at epoch "
                       f"{wanted[0]} (it was not kept up to date: the run was continued without "
                       "--patience, or stopped between writing the two); use --checkpoint last")
    return best


def _refuse_lost_best(folder: Path, last: Path) -> None:
    """RunError when the run trained with patience and its best epoch, an earlier one
    than the last checkpoint's, has no best checkpoint file."""
    if read_config(folder).training.patience is None:
        return      # no best model was ever kept: "best" is the last
    history = _checkpoint_history(last)
    wanted = None if history is None else best_epoch(history)
    if wanted is None or wanted[0] == history["epoch"][-1]:
        return      # the last checkpoint is the best epoch's model
    raise RunError(_lost_best_message(folder, wanted))


def _best_file_state(best: Path) -> str:
    if not os.path.lexists(best):
        return "does not exist"
    if not best.is_file():
        return "is not a file"
    kept = kept_epoch(best)
    return f"holds epoch {kept[0]}" if kept else "is unreadable"


def _lost_best_message(folder: Path, wanted: tuple[int, float]) -> str:
    """What is lost when a patience run's best checkpoint is, and what the user can do."""
    best = folder / BEST_CHECKPOINT_FILE
    return (f"{best} {_best_file_state(best)}: the model of the run's best epoch {wanted[0]} "
            f"(validation loss {wanted[1]:.4f}) is lost; use --checkpoint last for the last "
            "epoch's model")


def _unresumable_patience(folder: Path, wanted: tuple[int, float], added: bool) -> str:
    """Why a resume with patience cannot continue, with advice the CLI can follow: patience
    given anew can be left out again; the run's own patience is kept on resume (there is no
    flag to unset it), so only a new run trains on with early stopping."""
    best = folder / BEST_CHECKPOINT_FILE
    why = ("epochs trained without patience keep no best model" if added else "it was lost")
    advice = ("resume without --patience, or start a new run with it" if added else
              "--checkpoint last still evaluates, samples, encodes and plots the last epoch; "
              "to train on with early stopping, start a new run (another --out)")
    return (f"--patience: the best epoch so far is epoch {wanted[0]} (validation loss "
            f"{wanted[1]:.4f}), but its model was not kept ({best} {_best_file_state(best)}: "
            f"{why}), so early stopping could not return it; {advice}")


# ---------------------------------------------------------------------- writing
def write_metrics(path: Path, history: dict) -> None:
    """One row per epoch, one column per history entry (empty where a value is None)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = list(history)
    writer.writerow(columns)
    for row in zip(*(history[column] for column in columns)):
        writer.writerow(["" if value is None else value for value in row])
    write_atomic(path, buffer.getvalue().encode())


def run_files() -> list[str]:
    """Every file name cupyvae writes into a run folder."""
    from .plots import PLOT_FILES
    return [CONFIG_FILE, CHECKPOINT_FILE, BEST_CHECKPOINT_FILE, METRICS_FILE, EVALUATION_FILE,
            *PLOT_FILES.values()]


def remove_stale_temporaries(lock: "RunLock") -> list[Path]:
    """Delete the temporary files that killed writers of our run files left behind
    (write_atomic names them `.<file>.<random>.tmp`); returns what was removed.  Only
    under the folder's lock: another process's temporaries are in flight, not stale."""
    if not lock.held:
        raise RuntimeError(f"removing temporaries in {lock.folder} needs its lock")
    removed = []
    for name in run_files():
        for path in lock.folder.glob(f".{name}.*.tmp"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _clear_run_files(folder: Path) -> None:
    """Only cupyvae's own files go: a mistyped --out --force must not wipe a directory
    (samples-<n>.png only by that exact pattern, default_samples_path's)."""
    for name in run_files():
        (folder / name).unlink(missing_ok=True)
    for path in folder.glob("samples-*.png"):
        if path.name[len("samples-"):-len(".png")].isdigit():
            path.unlink(missing_ok=True)


class RunLock:
    """An exclusive fcntl.flock on `folder`/.cupyvae.lock, taken without waiting: RunInUse
    ("RUN is in use by another cupyvae process (pid N)") when another process holds it.

    The kernel releases a flock when its process dies, however it dies, so there is no
    stale lock to clean up.  The lock file is never removed (removing it would let a
    second process lock a new file while the first still holds the old one) and is not
    written through write_atomic: the lock belongs to the file's inode, which a rename
    would replace.  It holds the holder's pid, for the message."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._fd: int | None = None
        path = self.folder / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise RunInUse(f"{self.folder} is in use by another cupyvae process "
                           f"(pid {holder}); wait for it to finish, or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)      # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *_exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _lock_holder(fd: int) -> str:
    """The pid the holder wrote into the lock file ("unknown" in the instant between its
    lock and its write)."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"


def check_output_path(path: Path, suffixes) -> Path:
    """Refuse, before any work, a file the user asked a command to write (sample -o, encode
    -o, explore --save) that (1) does not end in one of `suffixes` (the writers'), (2) is
    in a folder that does not exist (nothing creates folders behind a typo), or (3) is one
    of cupyvae's own files in a run folder (config.json, a checkpoint, metrics.csv, a plot:
    run_files(), or the lock).  RunError names the path and the problem; returns `path`."""
    path = Path(path)
    suffixes = list(suffixes)
    if not path.name:
        raise RunError(f"{str(path)!r} is not a file name; the file must end in "
                       f"{' or '.join(suffixes)}")
    if path.suffix.lower() not in suffixes:
        raise RunError(f"{path}: the file must end in {' or '.join(suffixes)}")
    folder = path.parent
    if not folder.is_dir():
        problem = "is not a folder" if os.path.lexists(folder) else "does not exist"
        raise RunError(f"{path}: the folder {folder} {problem} (create it first)")
    refuse_run_file(path)
    return path


def refuse_run_file(path: Path) -> None:
    """RunError when `path` is one of cupyvae's own files inside a run folder (a folder
    with a config.json or a checkpoint): writing there would destroy the run."""
    path = Path(path)
    own = {name.casefold() for name in (*run_files(), LOCK_FILE)}
    if path.name.casefold() not in own or not is_run_folder(path.parent):
        return
    raise RunError(f"{path} is a file of the run in {path.parent} (cupyvae's own "
                   f"{path.name}); writing there would destroy it: choose another file name")


def is_run_folder(folder: Path) -> bool:
    return any(os.path.lexists(Path(folder) / name) for name in (CONFIG_FILE, CHECKPOINT_FILE))


def rerun_command(config: RunConfig, folder: Path) -> str:
    """The `cupyvae train` command line that repeats this run, for config.json."""
    words = ["cupyvae", "train"]
    for section, cls in ((config.run, RunOptions), (config.model, VAEConfig),
                         (config.training, TrainingOptions)):
        for f in cli_fields(cls):
            words += _flag_words(f.name, getattr(section, f.name), f.metadata["check"])
    return shlex.join([*words, "--out", str(folder)])


def _flag_words(name: str, value: Any, check: Check) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if value is None:
        return []
    if check.click_type() is None:                      # a boolean --x/--no-x flag
        return [flag if value else "--no-" + name.replace("_", "-")]
    if isinstance(value, tuple):
        return [flag, ",".join(map(str, value)) or "none"]
    return [flag, str(value)]


# ---------------------------------------------------------------------- starting a run
def dataset_reference(data: str) -> str:
    """Registered names stay names; files become absolute paths (a CSV file keeps its
    '#label=...' options), so config.json works from any directory."""
    if data in available_datasets():
        return data
    if is_csv_reference(data):
        path, options = parse_csv_reference(data)
        return csv_reference(path.resolve(), options)
    path = Path(data).expanduser()
    if not (path.suffix.lower() in (".npy", ".npz") or path.exists()):
        return data   # a name (or a typo, which load_dataset reports with the valid names)
    return str(path.resolve())


def default_run_folder(data: str) -> Path:
    if is_csv_reference(data):
        stem = parse_csv_reference(data)[0].stem
    else:
        stem = Path(data).stem if data.lower().endswith((".npy", ".npz")) else data
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class Run:
    """A run folder ready to train: its config, model and (validated) data.

    `x_val` is the test split used for validation, or None: either the dataset has no
    test split, or validation is the val_fraction split that fit takes from x_train
    (config.dataset says which).  `lock`: the folder's RunLock, held until train ends."""
    folder: Path
    config: RunConfig
    model: VAE
    dataset: Dataset
    x_train: np.ndarray
    x_val: np.ndarray | None
    lock: RunLock | None = None

    @property
    def validated(self) -> bool:
        """Whether the run has a validation set (the test split or a val_fraction split)."""
        return self.config.dataset.get("validation_examples", 0) > 0

    def train(self, reporter: Reporter) -> None:
        """Train until the run has config.training.epochs epochs (or early stopping ends
        it), then write the plots (of the best epoch's model when one was kept).

        Raises RunInterrupted on Ctrl-C or SIGTERM (the checkpoint of the last complete epoch
        is kept) and RunError when the loss diverges.  Releases the folder's lock at the end,
        however it ends."""
        try:
            self._train(reporter)
        finally:
            if self.lock is not None:
                self.lock.release()

    def _train(self, reporter: Reporter) -> None:
        done, target = len(self.model.history["epoch"]), self.config.training.epochs
        reporter.message(f"training {self.model!r} on {self.dataset.name}: "
                         f"{self.config.dataset['train_examples']} examples, validation on "
                         f"{_validation_words(self.config.dataset)}, epochs {done + 1}-{target}, "
                         f"run folder {self.folder}")
        bias = selection_bias(self.config)
        if bias:
            reporter.message(f"note: {bias}")
        limit, available = self.config.run.limit, len(self.dataset.x_train)
        if limit is not None and limit > available:
            reporter.message(f"note: --limit {limit} caps nothing: the train split of "
                             f"{self.dataset.name} has {available} examples, all used")
        try:
            with _sigterm_as_interrupt():
                if target > done:
                    self._fit(reporter, done, target)
                stop = early_stop_message(self.model.history, self.config.training.patience)
                if stop:
                    best = self.folder / BEST_CHECKPOINT_FILE
                    kept = f"its model is {best}" if best.is_file() else "its model was not kept"
                    reporter.message(f"{stop}; {kept}")
                write_run_plots(self.folder, self.config, self._plot_model(), self.dataset,
                                self.model.history, reporter)
        except KeyboardInterrupt as exc:
            raise RunInterrupted(self._interrupted_message(),
                                 143 if isinstance(exc, Terminated) else 130) from None
        except TrainingDiverged as exc:
            kept = (f"The checkpoint of the last good epoch is kept in {self.folder / CHECKPOINT_FILE}."
                    if self.model.history["epoch"] else "No epoch completed, so there is no checkpoint.")
            raise RunError(f"{exc} {kept}") from None

    def _fit(self, reporter: Reporter, done: int, target: int) -> None:
        """One fit() call for the remaining epochs: the data are checked and, on a GPU,
        uploaded once."""
        def after_epoch(_record: dict) -> None:
            write_metrics(self.folder / METRICS_FILE, self.model.history)

        self.model.fit(self.x_train, self.x_val,
                       self.config.training.replace(epochs=target - done),
                       checkpoint=self.folder / CHECKPOINT_FILE, reporter=reporter,
                       on_epoch=after_epoch)

    def _plot_model(self) -> VAE:
        """The best epoch's model when early stopping kept one, else the trained model."""
        best = self.folder / BEST_CHECKPOINT_FILE
        if self.config.training.patience is None or not best.is_file():
            return self.model
        return load(best, device=self.model.device)

    def _interrupted_message(self) -> str:
        """Which epoch the checkpoint holds, read back from the file itself (the signal may
        have landed between writing it and updating metrics.csv); aligns metrics.csv."""
        history = _checkpoint_history(self.folder / CHECKPOINT_FILE)
        saved = len(history["epoch"]) if history else 0
        if history:
            write_metrics(self.folder / METRICS_FILE, history)
        target = self.config.training.epochs
        folder = shlex.quote(str(self.folder))
        if saved == 0:
            return ("interrupted before the first epoch finished; no checkpoint was written. "
                    f"Start again with: {rerun_command(self.config, self.folder)} --force")
        if saved >= target or stopped_early(history, self.config.training.patience):
            return (f"interrupted while writing the plots; training is complete (epoch {saved} is "
                    f"in {self.folder / CHECKPOINT_FILE}). Write the plots with: cupyvae plot {folder}")
        return (f"interrupted; the last complete checkpoint (epoch {saved}) is kept in "
                f"{self.folder / CHECKPOINT_FILE}. Continue with: cupyvae train --resume "
                f"--out {folder} --epochs {target}")


def early_stop_message(history: dict, patience: int | None) -> str | None:
    """'stopped early at epoch 12: ...' when early stopping has ended training, else None."""
    if not stopped_early(history, patience):
        return None
    epoch, loss = best_epoch(history)
    last = history["epoch"][-1]
    return (f"stopped early at epoch {last}: the validation loss has not improved for "
            f"{last - epoch} epochs since epoch {epoch} ({loss:.3f}; patience {patience})")


def selection_bias(config: RunConfig) -> str | None:
    """Why the test score of the best checkpoint is optimistic, when early stopping chose
    it on the test split itself (patience without val_fraction); else None."""
    if config.training.patience is None or config.dataset.get("validation") != "test split":
        return None
    return ("early stopping selects the best epoch by its loss on the test split, so the test "
            "score of the best checkpoint is optimistically biased (--val-fraction selects "
            "on held-out training examples instead)")


def _validation_words(summary: dict) -> str:
    if not summary.get("validation_examples"):
        return "nothing (no test split)"
    return f"{summary['validation_examples']} examples ({summary['validation']})"


def start_run(folder: Path | None, model_options: dict, training: TrainingOptions,
              run_options: RunOptions, force: bool = False) -> Run:
    """Create (or, with `force`, overwrite) a run folder; nothing is written before the
    data have been loaded and checked against the model."""
    run_options = run_options.replace(data=dataset_reference(run_options.data))
    if training.threads is None:      # record the count used, so --resume repeats it bit for bit
        training = training.replace(threads=default_threads())
    folder = Path(folder) if folder is not None else default_run_folder(run_options.data)
    _refuse_occupied_folder(folder, force)
    # An existing folder is locked before any work; a new one once it is created.
    lock = RunLock(folder) if folder.is_dir() else None
    try:
        check_before_data(model_options, training)
        dataset = load_dataset(run_options.data)
        model = VAE(dataset.data_shape, **model_options, device=run_options.device,
                    execution=run_options.execution_mode)
        model.validate_training_options(training)      # e.g. free bits this model cannot have
        x_train, x_val, summary = _training_data(model, dataset, training, run_options)
        config = RunConfig(model=model.config, training=training, run=run_options,
                           dataset=summary, device_used=model.device)
        folder.mkdir(parents=True, exist_ok=True)
        lock = lock or RunLock(folder)
        _refuse_occupied_folder(folder, force)   # again, under the lock: a run may have begun
        remove_stale_temporaries(lock)
        _clear_run_files(folder)
        config.write(folder)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Run(folder, config, model, dataset, x_train, x_val, lock=lock)


def check_before_data(model_options: dict, training: TrainingOptions) -> None:
    """Refuse model options, and training options this model cannot train with, before the
    data are loaded (the data only fix data_shape, which no such rule reads); the device's
    own rules are checked once the model is built (VAE.validate_training_options)."""
    spec = ModelSpec(VAEConfig(data_shape=(1,), **model_options))
    objective_for(training).check_model(spec)


def resume_run(folder: Path, changes: dict) -> Run | None:
    """The run in `folder`, to be trained on; None when it already has its epochs or early
    stopping has ended it (finished_message says which).

    `changes`: the options given anew (by name); only RESUMABLE_OPTIONS may differ from the
    stored ones (RunError names the first that does)."""
    folder = Path(folder)
    stored = read_config(folder)
    lock = RunLock(folder)
    try:
        run = _resume(folder, stored, changes, lock)
    except BaseException:
        lock.release()
        raise
    if run is None:
        lock.release()
    return run


def _resume(folder: Path, stored: RunConfig, changes: dict, lock: RunLock) -> Run | None:
    _refuse_changed_options(stored, changes)
    if not os.path.lexists(folder / CHECKPOINT_FILE):   # anything else there: load_run says what
        raise RunError(f"{folder} has no {CHECKPOINT_FILE}: no epoch was completed; "
                       "start it again with --force")
    run_options = stored.run.replace(**{k: v for k, v in changes.items() if k in ("device", "execution")})
    training = stored.training.replace(**{k: v for k, v in changes.items()
                                          if k in ("epochs", "patience")})
    config, model = load_run(folder, run_options.device, run_options.execution_mode)
    model.validate_training_options(training)      # the objective on a newly chosen device
    done = len(model.history["epoch"])
    if done >= training.epochs or stopped_early(model.history, training.patience):
        return None
    if training.patience is not None:
        try:    # before loading the data: is the best epoch's model kept (or this one)?
            model.sync_best_checkpoint(folder / CHECKPOINT_FILE)
        except ValueError:
            raise RunError(_unresumable_patience(folder, best_epoch(model.history),
                                                 added=stored.training.patience is None)) from None
    dataset = load_dataset(run_options.data)
    x_train, x_val, summary = _training_data(model, dataset, training, run_options)
    _refuse_changed_data(folder, run_options.data, config.dataset, summary)
    config = RunConfig(model=config.model, training=training, run=run_options,
                       dataset={**summary, **config.dataset},   # older runs gain the digests
                       device_used=model.device)
    remove_stale_temporaries(lock)
    config.write(folder)
    return Run(folder, config, model, dataset, x_train, x_val, lock=lock)


def finished_message(folder: Path, changes: dict) -> str:
    """Why resume_run(folder, changes) has nothing to train."""
    config = read_config(folder)
    history = _checkpoint_history(Path(folder) / CHECKPOINT_FILE) or {"epoch": []}
    patience = changes.get("patience", config.training.patience)
    epochs = changes.get("epochs", config.training.epochs)
    stop = early_stop_message(history, patience)
    if stop and len(history["epoch"]) < epochs:
        return (f"{folder} {stop}; nothing to train (a larger --patience continues it; "
                f"`cupyvae plot {shlex.quote(str(folder))}` rewrites its plots)")
    return (f"{folder} already has its epochs (--epochs {epochs}); nothing to train "
            f"(`cupyvae plot {shlex.quote(str(folder))}` rewrites its plots)")


# What a resumed run compares with config.json's dataset section (those it holds: runs
# started before the digests existed have only the counts).
DATA_IDENTITY = ("train_examples", "validation_examples", "validation_rows_sha256",
                 "train_sha256", "validation_sha256")


def _refuse_changed_data(folder: Path, data: str, stored: dict, summary: dict) -> None:
    """A resumed run must train and validate on the examples it started with."""
    changed = [key for key in DATA_IDENTITY if key in stored and stored[key] != summary.get(key)]
    if changed:
        counts = (f"{stored.get('train_examples')} training and "
                  f"{stored.get('validation_examples')} validation examples")
        raise RunError(f"the data of {folder} changed since the run started: {data} no longer "
                       f"gives the examples in {CONFIG_FILE} ({counts}; {', '.join(changed)} "
                       "differ); restore the data or start a new run")


def _refuse_changed_options(stored: RunConfig, changes: dict) -> None:
    """A resumed run keeps its options; silently ignoring a different --lr would mislead."""
    current = {**stored.run.to_dict(), **stored.model.to_dict(), **stored.training.to_dict()}
    for name, value in changes.items():
        if name in RESUMABLE_OPTIONS:
            continue
        given = dataset_reference(value) if name == "data" else value
        if json.loads(json.dumps(given)) != current.get(name):
            flag = "--" + name.replace("_", "-")
            raise RunError(f"{flag} {shown(value)} differs from the run's {shown(current.get(name))} "
                           f"({CONFIG_FILE}); a resumed run keeps its options (only "
                           f"{', '.join('--' + n for n in RESUMABLE_OPTIONS)} may change)")


def shown(value) -> str:
    """A value as the user typed it (lists comma-separated), for messages."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _refuse_occupied_folder(folder: Path, force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise RunError(f"--out {folder} exists and is not a folder")
    if folder.is_dir() and any(p.name != LOCK_FILE for p in folder.iterdir()) and not force:
        raise RunError(f"run folder {folder} already exists and is not empty; use --resume "
                       "to continue it, --force to overwrite it, or another --out")


def _training_data(model: VAE, dataset: Dataset, training: TrainingOptions,
                   run_options: RunOptions) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(the train split cut to `limit`, the test split as validation set or None, the
    summary for config.json's dataset section), checked against the model by its own
    boundary check, so the CLI and the library accept exactly the same data.

    With val_fraction, fit takes the validation set from the training data itself
    (training.split_validation); the summary records that split and its digest."""
    x_train = dataset.x_train[:run_options.limit] if run_options.limit else dataset.x_train
    x_train = model.validate_data(x_train, f"training data ({dataset.name}, train split)")
    if training.binarize:
        check_binarizable(x_train, f"the training data ({dataset.name}, train split)")
    if training.val_fraction:
        train_rows, val_rows = split_validation(len(x_train), training.val_fraction,
                                                model.config.seed)   # OptionError names the field
        x_val = None
        summary = {"name": dataset.name, "train_examples": len(train_rows),
                   "validation": f"{training.val_fraction:g} of the train split",
                   "validation_examples": len(val_rows), "split_seed": model.config.seed,
                   "validation_rows_sha256": split_digest(val_rows),
                   "train_sha256": data_digest(x_train)}
    else:
        x_val = validation_split(model, dataset, training.binarize)
        summary = {"name": dataset.name, "train_examples": len(x_train), "validation": "test split",
                   "validation_examples": 0 if x_val is None else len(x_val),
                   "train_sha256": data_digest(x_train)}
        if x_val is not None:
            summary["validation_sha256"] = data_digest(x_val)
    model.spec.prior.check_training_set(summary["train_examples"],
                                        f"the training set ({dataset.name})")
    check_data_sizes(training, summary["train_examples"], summary["validation_examples"],
                     f"the training set of {dataset.name}")
    return x_train, x_val, summary


def validation_split(model: VAE, dataset: Dataset, binarize: bool) -> np.ndarray | None:
    """The test split, checked, then binarized the way fit binarizes its validation set (so
    evaluate reproduces the last val_loss); None when there is no test split."""
    if len(dataset.x_test) == 0:
        return None
    x_test = model.validate_data(dataset.x_test, f"validation data ({dataset.name}, test split)")
    if not binarize:
        return x_test
    check_binarizable(x_test, f"the test split of {dataset.name}")
    return binarize_batch(x_test, model.config.seed, 0)


def _checkpoint_history(path: Path) -> dict | None:
    try:
        return load_checkpoint(path).history
    except CheckpointError:
        return None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so it unwinds like Ctrl-C: atomic writes drop
    their temporary file and the run reports the epoch its checkpoint holds."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    def raise_terminated(_signum, _frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:          # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------- using a trained run
def evaluate_run(folder: Path, device: str = "auto", iw_samples: int = 0,
                 reporter: Reporter | None = None, checkpoint: str = "best",
                 threads: int | None = None) -> dict:
    """Test-set negative ELBO (and, with iw_samples > 0, the importance-sampled log-likelihood)
    of the run's checkpoint ("best" or "last", see load_run); writes evaluation.json and
    returns its content.  Both passes report their progress to `reporter`.  `threads`: BLAS
    threads of the NumPy path (None: the run's training count)."""
    folder = Path(folder)
    reporter = reporter or Reporter()
    config, model = load_run(folder, device, checkpoint=checkpoint)
    threads = threads or config.training.threads or default_threads()
    dataset = load_dataset(config.run.data)
    x_test = validation_split(model, dataset, config.training.binarize)
    if x_test is None:
        raise RunError(f"dataset {dataset.name} has no test split to evaluate on")
    n = len(x_test)
    with reporter.task(f"negative ELBO ({n} test examples)", n) as advance:
        negative_elbo = model.loss(x_test, progress=advance, threads=threads)
    result = {"dataset": dataset.name, "split": "test", "examples": n,
              "binarized": config.training.binarize, "checkpoint": checkpoint_path(folder, checkpoint).name,
              "epochs": len(model.history["epoch"]), "threads": threads,
              "negative_elbo": negative_elbo,
              "bits_per_dim_basis": model.bits_per_dim_basis(x_test, config.training.binarize)}
    result["negative_elbo_bits_per_dim"] = float(model.bits_per_dim(-negative_elbo, x_test,
                                                                    config.training.binarize))
    if iw_samples:
        with reporter.task(f"importance sampling, K={iw_samples} ({n} test examples)", n) as advance:
            log_px = model.log_likelihood(x_test, n_samples=iw_samples, progress=advance,
                                          threads=threads)
        result.update(iw_samples=iw_samples, log_likelihood=float(np.mean(log_px)))
        result["log_likelihood_bits_per_dim"] = float(model.bits_per_dim(result["log_likelihood"],
                                                                          x_test,
                                                                          config.training.binarize))
    note = model.log_likelihood_note(x_test)
    if note:
        result["note"] = note
    bias = selection_bias(config)
    if bias and result["checkpoint"] == BEST_CHECKPOINT_FILE:
        result["selection_note"] = bias
    write_json(folder / EVALUATION_FILE, result)
    return result


def write_plots(folder: Path, device: str = "auto", checkpoint: str = "best",
                reporter: Reporter | None = None) -> list[Path]:
    """(Re)write every plot of the run into its folder: the pictures of the chosen
    checkpoint's model, the loss curves of the whole run; progress goes to `reporter`."""
    config, model = load_run(folder, device, checkpoint=checkpoint)
    history = load_checkpoint(Path(folder) / CHECKPOINT_FILE).history   # a damaged one: said
    return write_run_plots(folder, config, model, load_dataset(config.run.data), history, reporter)


def write_run_plots(folder: Path, config: RunConfig, model: VAE, dataset: Dataset,
                    history: dict | None = None, reporter: Reporter | None = None) -> list[Path]:
    from .plots import plot_files, write_all
    history = model.history if history is None else history
    pictures = len(plot_files(model, history))
    with (reporter or Reporter()).task(f"drawing {pictures} pictures", pictures) as advance:
        return write_all(model, dataset, history, folder,
                         validation=config.dataset.get("validation", "test split"),
                         training=config.training, progress=advance)


def data_codes(config: RunConfig, model: VAE, most: int = 5000,
               reporter: Reporter | None = None) -> np.ndarray:
    """Posterior means of at most `most` evenly spaced test examples (training examples
    where there is no test split): where the run's data lie in the latent space.  The
    encoding reports its progress to `reporter`."""
    dataset = load_dataset(config.run.data)
    x = dataset.x_test if len(dataset.x_test) else dataset.x_train
    keep = np.unique(np.linspace(0, len(x) - 1, min(len(x), most)).astype(np.int64))
    with (reporter or Reporter()).task(f"encoding {len(keep)} examples", len(keep)) as advance:
        return model.encode(x[keep], progress=advance)


# ---------------------------------------------------------------------- encode
ENCODE_SPLITS = ("all", "train", "test")


def encode_run(folder: Path, output: Path, data: str | None = None, split: str = "all",
               sample: bool = False, device: str = "auto", checkpoint: str = "best",
               reporter: Reporter | None = None) -> dict:
    """Latent codes of a dataset under the run's model, written atomically to `output`.

    data: a dataset reference (name, .npy/.npz/.csv path) of the model's data shape;
    default the run's own.  split: "all" (the train split, then the test split: the file's
    row order for .npy and .csv files), "train" or "test".  Codes are posterior means
    (N, latent_dim) float32, or one draw z ~ q(z|x) each with `sample`, computed in
    batches of cupyvae.model.EVAL_CHUNK examples, with the run's BLAS thread count (as
    evaluate_run).

    output FILE.npy: the codes; labels, where the dataset has them, go beside it to
    FILE.labels.npy (int64); where it has none, an old FILE.labels.npy is removed, so it
    never poses as the labels of these codes.  FILE.csv: a header z1,...,zK[,label[,label_name]]
    and one row per example.  `output` (and FILE.labels.npy) pass check_output_path.
    Returns a summary (examples, files written, a stale labels file removed, ...)."""
    output = check_output_path(output, CODE_WRITERS)
    writer = CODE_WRITERS[output.suffix.lower()]
    if output.suffix.lower() == ".npy":
        refuse_run_file(labels_path(output))
    if split not in ENCODE_SPLITS:
        raise RunError(f"split {split!r}: choose one of {', '.join(ENCODE_SPLITS)}")
    reporter = reporter or Reporter()
    config, model = load_run(folder, device, checkpoint=checkpoint)
    dataset = load_dataset(dataset_reference(data) if data is not None else config.run.data)
    x, y = _split_examples(dataset, split)
    if len(x) == 0:
        raise RunError(f"dataset {dataset.name} has no {split} split to encode")
    x = model.validate_data(x, f"{dataset.name} ({split} split)")
    kind = "posterior samples" if sample else "posterior means"
    with reporter.task(f"encoding {len(x)} examples ({kind})", len(x)) as advance:
        codes = model.encode(x, sample=sample, progress=advance,
                             threads=config.training.threads)
    names = getattr(dataset, "label_names", None)
    if names is None:
        from .plots import KNOWN_LABEL_NAMES
        names = KNOWN_LABEL_NAMES.get(dataset.name)
    stale = labels_path(output)
    stale = stale if output.suffix.lower() == ".npy" and y is None and stale.is_file() else None
    written = writer(output, codes, y, names)
    return {"dataset": dataset.name, "split": split, "examples": len(codes), "codes": kind,
            "latent_dim": codes.shape[1], "labels": y is not None,
            "files": [str(path) for path in written],
            "removed": [] if stale is None else [str(stale)]}


def _split_examples(dataset: Dataset, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    if split == "train":
        return dataset.x_train, dataset.y_train
    if split == "test":
        return dataset.x_test, dataset.y_test
    x = np.concatenate([dataset.x_train, dataset.x_test])
    labelled = dataset.y_train is not None and (dataset.y_test is not None or not len(dataset.x_test))
    y = np.concatenate([dataset.y_train, dataset.y_test if dataset.y_test is not None
                        else np.empty(0, np.int64)]) if labelled else None
    return x, y


def labels_path(output: Path) -> Path:
    """FILE.npy -> FILE.labels.npy, where `encode` puts the labels of FILE.npy's codes."""
    return output.with_name(f"{output.stem}.labels.npy")


def _write_codes_npy(output: Path, codes: np.ndarray, y, _names) -> list[Path]:
    """The old labels file goes first and the new one comes last, so that no moment (an
    interrupt between the writes) pairs codes with labels that are not theirs."""
    labels = labels_path(output)
    if labels.is_file() or labels.is_symlink():
        labels.unlink()
    write_atomic(output, _npy_bytes(codes))
    if y is None:
        return [output]
    write_atomic(labels, _npy_bytes(np.asarray(y, np.int64)))
    return [output, labels]


def _write_codes_csv(output: Path, codes: np.ndarray, y, names) -> list[Path]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = [f"z{k + 1}" for k in range(codes.shape[1])]
    if y is not None:
        header += ["label"] + (["label_name"] if names is not None else [])
    writer.writerow(header)
    text = [[f"{value:.9g}" for value in row] for row in codes.tolist()]
    if y is not None:
        for row, label in zip(text, np.asarray(y).tolist()):
            row.append(str(label))
            if names is not None:
                row.append(str(names[label]) if 0 <= label < len(names) else "")
    writer.writerows(text)
    write_atomic(output, buffer.getvalue().encode())
    return [output]


CODE_WRITERS: dict[str, Callable[..., list[Path]]] = {".npy": _write_codes_npy, ".csv": _write_codes_csv}


# ---------------------------------------------------------------------- samples
def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _write_sample_array(drawn: np.ndarray, output: Path, _model, _view) -> None:
    write_atomic(output, _npy_bytes(drawn))


def _write_sample_grid(drawn: np.ndarray, output: Path, model, view) -> None:
    """The picture samples.png is, titled by the same rule (plots.samples_title: with the
    warning when the data's codes are not distributed like the prior)."""
    from .plots import sample_grid
    sample_grid(model, drawn, output, view())


# suffix -> writer(drawn, output, model, view), view() the LatentView of the run's data.
SAMPLE_WRITERS: dict[str, Callable[[np.ndarray, Path, VAE, Callable], None]] = {
    ".npy": _write_sample_array, ".png": _write_sample_grid}


def default_samples_path(folder: Path, n: int) -> Path:
    """Where `cupyvae sample` writes without -o: inside the run folder."""
    return Path(folder) / f"samples-{n}.png"


def write_samples(folder: Path, n: int, output: Path | None = None, seed: int | None = None,
                  device: str = "auto", checkpoint: str = "best") -> Path:
    """n prior samples of the run's model, decoded, as FILE.npy (the array) or FILE.png;
    default default_samples_path (a PNG inside the run folder).  A given `output` passes
    check_output_path (RunError before any work)."""
    output = (default_samples_path(folder, n) if output is None
              else check_output_path(output, SAMPLE_WRITERS))
    writer = SAMPLE_WRITERS[output.suffix.lower()]
    config, model = load_run(folder, device, checkpoint=checkpoint)

    def view():
        from .plots import data_view
        return data_view(model, load_dataset(config.run.data))

    writer(model.sample(n, seed=seed), output, model, view)
    return output
