"""The run folder: everything about one training run, and the only code that reads or writes one.

    config.json              what the run is: the model config, the training options, the run
                             options (data, limit, device, execution), the dataset's size and
                             the command that repeats the run
    checkpoint.safetensors   model + optimizer + history, rewritten atomically every epoch
    metrics.csv              one row per epoch: every column of the history (rewritten every epoch)
    *.png                    the plots (cupyvae.plots.PLOT_FILES)
    evaluation.json          written by `evaluate`

Every file is written through cupyvae.files.write_atomic, and every file is validated when
it is read: config.json by the same frozen dataclasses the API uses (VAEConfig,
TrainingOptions, RunOptions), so a hand-edited `"limit": -5990` or `"binarize": "no"` is
refused naming the field, and the checkpoint by cupyvae.checkpoint.  A killed run leaves at
most a temporary file behind, which the next run in the folder removes.

The CLI (cupyvae.cli) only parses the command line and calls these functions:

    run = start_run(folder, model_options, TrainingOptions(...), RunOptions(data="mnist"))
    run.train(reporter)                 # Ctrl-C / SIGTERM: RunInterrupted names the saved epoch
    evaluate_run(folder, device="cpu", iw_samples=100)
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from . import __version__
from .checkpoint import CheckpointError, read_checkpoint
from .config import VAEConfig
from .datasets import Dataset, available_datasets, load_dataset
from .executors import EXECUTORS, binarize_batch
from .files import write_atomic
from .model import VAE, TrainingDiverged, load
from .options import Check, ValidatedOptions, cli_fields, one_of, option, optional, positive_int
from .threads import default_threads
from .training import TrainingOptions

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.csv"
EVALUATION_FILE = "evaluation.json"
RUN_FORMAT = 2          # config.json layout; format 1 (no "run" section) is still read
DEFAULT_DATA = "fashion-mnist"
EXECUTIONS = ("auto", "eager", "graph")


class RunError(ValueError):
    """A problem with a run folder that the user can fix; the message says how."""


class RunInterrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM; `message` names the epoch the checkpoint holds."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _data_reference(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a dataset name or the path of a .npy/.npz file")
    return value


@dataclass(frozen=True)
class RunOptions(ValidatedOptions):
    """Where a run's data come from and where it computes; not part of the model or of
    `fit`.  `device` and `execution` may change when a run is resumed."""
    owner = "run option"

    data: str = option(DEFAULT_DATA, Check("must be a dataset name or a .npy/.npz path",
                                           _data_reference, lambda: click.STRING),
                       "Dataset name or a .npy/.npz file.  Training uses its train split; "
                       "its test split is the validation set.")
    limit: int | None = option(None, optional(positive_int),
                               "Use only the first N training examples (for quick runs).")
    device: str = option("auto", one_of(lambda: ["auto", *EXECUTORS.names()]),
                         "Where to train; auto picks cuda when a GPU is usable, else cpu.")
    execution: str = option("auto", one_of(EXECUTIONS),
                            "Kernel devices only: replay each training step from a CUDA graph, "
                            "or launch eagerly; auto is graph on cuda.  Both give the same numbers.")

    @property
    def execution_mode(self) -> str | None:
        """None lets the device choose (graph on cuda, eager elsewhere)."""
        return None if self.execution == "auto" else self.execution


# Options that a resumed run may change; every other option is the run's for life.
RESUMABLE_OPTIONS = ("epochs", "device", "execution")


@dataclass(frozen=True)
class RunConfig:
    """The validated content of config.json."""
    model: VAEConfig
    training: TrainingOptions
    run: RunOptions
    dataset: dict
    version: str = __version__

    def to_dict(self, folder: Path) -> dict:
        content = {"format": RUN_FORMAT, "cupyvae_version": self.version,
                   "model": self.model.to_dict(), "training": self.training.to_dict(),
                   "run": self.run.to_dict(), "dataset": self.dataset}
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
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path} is damaged ({type(exc).__name__}: {exc})") from None
    if not isinstance(content, dict):
        raise RunError(f"{path} is damaged: not a JSON object")
    content = _upgrade_format_1(content)
    try:
        return RunConfig(model=VAEConfig.from_dict(content.get("model"), "model"),
                         training=TrainingOptions.from_dict(content.get("training"), "training"),
                         run=RunOptions.from_dict(content.get("run"), "run"),
                         dataset=_dataset_section(content.get("dataset")),
                         version=str(content.get("cupyvae_version", "unknown")))
    except ValueError as exc:
        raise RunError(f"{path} is invalid: {exc}") from None


def _upgrade_format_1(content: dict) -> dict:
    """Format 1 kept data, limit and device in the training section."""
    if "run" in content or not isinstance(content.get("training"), dict):
        return content
    training = dict(content["training"])
    run = {key: training.pop(key) for key in ("data", "limit", "device") if key in training}
    return {**content, "training": training, "run": run}


def _dataset_section(section) -> dict:
    if not isinstance(section, dict):
        raise ValueError(f"dataset must be a JSON object, got {section!r}")
    return section


def load_run(folder: Path, device: str = "auto", execution: str | None = None
             ) -> tuple[RunConfig, VAE]:
    """config.json and the model of its checkpoint, which must belong to it."""
    folder = Path(folder)
    config = read_config(folder)
    model = load(folder / CHECKPOINT_FILE, device=device, execution=execution)
    if model.config != config.model:
        raise RunError(f"{folder / CHECKPOINT_FILE} does not belong to {folder / CONFIG_FILE}: "
                       "their model configs differ")
    return config, model


# ---------------------------------------------------------------------- writing
def write_json(path: Path, content: dict) -> None:
    write_atomic(path, (json.dumps(content, indent=2) + "\n").encode())


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
    return [CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE, EVALUATION_FILE, *PLOT_FILES.values()]


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that killed writers of our run files left behind
    (write_atomic names them `.<file>.<random>.tmp`); returns what was removed."""
    removed = []
    for name in run_files():
        for path in Path(folder).glob(f".{name}.*.tmp"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _clear_run_files(folder: Path) -> None:
    """Only cupyvae's own files go: a mistyped --out --force must not wipe a directory."""
    for name in run_files():
        (folder / name).unlink(missing_ok=True)


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
    """Registered names stay names; files become absolute paths, so config.json works from
    any directory."""
    path = Path(data).expanduser()
    if data in available_datasets() or not (path.suffix.lower() in (".npy", ".npz") or path.exists()):
        return data   # a name (or a typo, which load_dataset reports with the valid names)
    return str(path.resolve())


def default_run_folder(data: str) -> Path:
    stem = Path(data).stem if data.lower().endswith((".npy", ".npz")) else data
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class Run:
    """A run folder ready to train: its config, model and (validated) data."""
    folder: Path
    config: RunConfig
    model: VAE
    dataset: Dataset
    x_train: np.ndarray
    x_val: np.ndarray | None

    def train(self, reporter: "Reporter") -> None:
        """Train until the run has config.training.epochs epochs, then write the plots.

        Raises RunInterrupted on Ctrl-C or SIGTERM (the checkpoint of the last complete epoch
        is kept) and RunError when the loss diverges."""
        done, target = len(self.model.history["epoch"]), self.config.training.epochs
        reporter.message(f"training {self.model!r} on {self.dataset.name}: {len(self.x_train)} "
                         f"examples, epochs {done + 1}-{target}, run folder {self.folder}")
        try:
            with _sigterm_as_interrupt():
                if target > done:
                    self._fit(reporter, done, target)
                reporter.message("writing plots ...")
                from .plots import write_all
                write_all(self.model, self.dataset, self.model.history, self.folder)
        except KeyboardInterrupt as exc:
            raise RunInterrupted(self._interrupted_message(),
                                 143 if isinstance(exc, Terminated) else 130) from None
        except TrainingDiverged as exc:
            kept = (f"The checkpoint of the last good epoch is kept in {self.folder / CHECKPOINT_FILE}."
                    if self.model.history["epoch"] else "No epoch completed, so there is no checkpoint.")
            raise RunError(f"{exc} {kept}") from None

    def _fit(self, reporter: "Reporter", done: int, target: int) -> None:
        """One fit() call for the remaining epochs: the data are checked and, on a GPU,
        uploaded once."""
        batches = len(self.x_train) // self.config.training.batch_size
        reporter.epoch_started(done + 1, target, batches)

        def after_epoch(record: dict) -> None:
            write_metrics(self.folder / METRICS_FILE, self.model.history)
            reporter.epoch_finished(record)
            if record["epoch"] < target:
                reporter.epoch_started(record["epoch"] + 1, target, batches)

        self.model.fit(self.x_train, self.x_val,
                       self.config.training.replace(epochs=target - done),
                       checkpoint=self.folder / CHECKPOINT_FILE,
                       progress=reporter.batches_done, on_epoch=after_epoch)

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
        if saved >= target:
            return (f"interrupted while writing the plots; training is complete (epoch {saved} is "
                    f"in {self.folder / CHECKPOINT_FILE}). Write the plots with: cupyvae plot {folder}")
        return (f"interrupted; the last complete checkpoint (epoch {saved}) is kept in "
                f"{self.folder / CHECKPOINT_FILE}. Continue with: cupyvae train --resume "
                f"--out {folder} --epochs {target}")


class Reporter:
    """What a run tells its user; the CLI draws progress bars, the default says nothing."""

    def message(self, text: str) -> None:
        pass

    def epoch_started(self, epoch: int, target: int, batches: int) -> None:
        pass

    def batches_done(self, n: int) -> None:
        pass

    def epoch_finished(self, record: dict) -> None:
        pass


def start_run(folder: Path | None, model_options: dict, training: TrainingOptions,
              run_options: RunOptions, force: bool = False) -> Run:
    """Create (or, with `force`, overwrite) a run folder; nothing is written before the
    data have been loaded and checked against the model."""
    run_options = run_options.replace(data=dataset_reference(run_options.data))
    if training.threads is None:      # record the count used, so --resume repeats it bit for bit
        training = training.replace(threads=default_threads())
    folder = Path(folder) if folder is not None else default_run_folder(run_options.data)
    _refuse_occupied_folder(folder, force)
    dataset = load_dataset(run_options.data)
    model = VAE(dataset.data_shape, **model_options, device=run_options.device,
                execution=run_options.execution_mode)
    x_train, x_val = _training_data(model, dataset, training, run_options)
    config = RunConfig(model=model.config, training=training, run=run_options,
                       dataset=_dataset_summary(dataset, x_train, x_val))
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    _clear_run_files(folder)
    config.write(folder)
    return Run(folder, config, model, dataset, x_train, x_val)


def resume_run(folder: Path, changes: dict) -> Run | None:
    """The run in `folder`, to be trained on; None when it already has its epochs.

    `changes`: the options given anew (by name); only RESUMABLE_OPTIONS may differ from the
    stored ones (RunError names the first that does)."""
    folder = Path(folder)
    stored = read_config(folder)
    _refuse_changed_options(stored, changes)
    if not (folder / CHECKPOINT_FILE).is_file():
        raise RunError(f"{folder} has no {CHECKPOINT_FILE}: no epoch was completed; "
                       "start it again with --force")
    run_options = stored.run.replace(**{k: v for k, v in changes.items() if k in ("device", "execution")})
    training = stored.training.replace(**{k: v for k, v in changes.items() if k == "epochs"})
    config, model = load_run(folder, run_options.device, run_options.execution_mode)
    done = len(model.history["epoch"])
    if done >= training.epochs:
        return None
    dataset = load_dataset(run_options.data)
    x_train, x_val = _training_data(model, dataset, training, run_options)
    config = RunConfig(model=config.model, training=training, run=run_options,
                       dataset=config.dataset)
    remove_stale_temporaries(folder)
    config.write(folder)
    return Run(folder, config, model, dataset, x_train, x_val)


def _refuse_changed_options(stored: RunConfig, changes: dict) -> None:
    """A resumed run keeps its options; silently ignoring a different --lr would mislead."""
    current = {**stored.run.to_dict(), **stored.model.to_dict(), **stored.training.to_dict()}
    for name, value in changes.items():
        if name in RESUMABLE_OPTIONS:
            continue
        given = dataset_reference(value) if name == "data" else value
        if json.loads(json.dumps(given)) != current.get(name):
            flag = "--" + name.replace("_", "-")
            raise RunError(f"{flag} {_shown(value)} differs from the run's {_shown(current.get(name))} "
                           f"({CONFIG_FILE}); a resumed run keeps its options (only "
                           f"{', '.join('--' + n for n in RESUMABLE_OPTIONS)} may change)")


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _refuse_occupied_folder(folder: Path, force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise RunError(f"--out {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise RunError(f"run folder {folder} already exists and is not empty; use --resume "
                       "to continue it, --force to overwrite it, or another --out")


def _training_data(model: VAE, dataset: Dataset, training: TrainingOptions,
                   run_options: RunOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """(the train split cut to `limit`, the validation split), both checked against the model
    by its own boundary check, so the CLI and the library accept exactly the same data."""
    x_train = dataset.x_train[:run_options.limit] if run_options.limit else dataset.x_train
    x_train = model.validate_data(x_train, f"training data ({dataset.name}, train split)")
    if training.batch_size > len(x_train):
        raise RunError(f"--batch-size {training.batch_size} is larger than the training set "
                       f"({len(x_train)} examples of {dataset.name})")
    return x_train, validation_split(model, dataset, training.binarize)


def validation_split(model: VAE, dataset: Dataset, binarize: bool) -> np.ndarray | None:
    """The test split, checked, then binarized the way fit binarizes its validation set (so
    evaluate reproduces the last val_loss); None when there is no test split."""
    if len(dataset.x_test) == 0:
        return None
    x_test = model.validate_data(dataset.x_test, f"validation data ({dataset.name}, test split)")
    return binarize_batch(x_test, model.config.seed, 0) if binarize else x_test


def _dataset_summary(dataset: Dataset, x_train, x_val) -> dict:
    return {"name": dataset.name, "train_examples": len(x_train), "validation": "test split",
            "validation_examples": 0 if x_val is None else len(x_val)}


def _checkpoint_history(path: Path) -> dict | None:
    try:
        return read_checkpoint(path)[1]["history"]
    except (CheckpointError, KeyError, TypeError):
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
                 reporter: Reporter | None = None, threads: int | None = None) -> dict:
    """Test-set negative ELBO (and, with iw_samples > 0, the importance-sampled log-likelihood)
    of the run's checkpoint; writes evaluation.json and returns its content.  `threads`:
    BLAS threads (None: the run's training count)."""
    folder = Path(folder)
    config, model = load_run(folder, device)
    threads = threads or config.training.threads or default_threads()
    dataset = load_dataset(config.run.data)
    x_test = validation_split(model, dataset, config.training.binarize)
    if x_test is None:
        raise RunError(f"dataset {dataset.name} has no test split to evaluate on")
    result = {"dataset": dataset.name, "split": "test", "examples": len(x_test),
              "binarized": config.training.binarize, "epochs": len(model.history["epoch"]),
              "threads": threads, "negative_elbo": model.loss(x_test, threads=threads)}
    if iw_samples:
        log_px = model.log_likelihood(x_test, n_samples=iw_samples, threads=threads)
        result.update(iw_samples=iw_samples, log_likelihood=float(np.mean(log_px)))
    write_json(folder / EVALUATION_FILE, result)
    return result


def write_plots(folder: Path, device: str = "auto") -> list[Path]:
    """(Re)write every plot of the run into its folder."""
    config, model = load_run(folder, device)
    from .plots import write_all
    return write_all(model, load_dataset(config.run.data), model.history, folder)


def _write_sample_array(drawn: np.ndarray, output: Path, _model) -> None:
    buffer = io.BytesIO()
    np.save(buffer, drawn)
    write_atomic(output, buffer.getvalue())


def _write_sample_grid(drawn: np.ndarray, output: Path, model) -> None:
    from .plots import image_grid
    image_grid(drawn, output, data_shape=model.config.data_shape,
               title=f"{len(drawn)} samples from the prior")


SAMPLE_WRITERS: dict[str, Callable[[np.ndarray, Path, VAE], None]] = {
    ".npy": _write_sample_array, ".png": _write_sample_grid}


def write_samples(folder: Path, n: int, output: Path, seed: int | None = None,
                  device: str = "auto") -> Path:
    """n prior samples of the run's model, decoded, as FILE.npy (the array) or FILE.png."""
    writer = SAMPLE_WRITERS.get(Path(output).suffix.lower())
    if writer is None:
        raise RunError(f"{output}: the file must end in {' or '.join(SAMPLE_WRITERS)}")
    _config, model = load_run(folder, device)
    writer(model.sample(n, seed=seed), Path(output), model)
    return Path(output)
