"""The `cupyvae` command line: train, evaluate, sample, plot and explore VAEs.

A run folder holds everything about one training run:

    config.json              model config, training options and dataset: enough to rerun
    checkpoint.safetensors   model + optimizer + history, rewritten atomically every epoch
    metrics.csv              epoch,train_loss,val_loss,seconds (rewritten every epoch)
    *.png                    the plots (cupyvae.plots.PLOT_FILES)
    evaluation.json          written by `cupyvae evaluate`

Every user mistake ends in a one-line message and a non-zero exit status, never a
traceback; set CUPYVAE_DEBUG=1 to see the traceback anyway.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shlex
import sys
import time
from pathlib import Path

import click
import numpy as np

from . import __version__
from .checkpoint import CheckpointError, read_checkpoint
from .files import write_atomic
from .config import VAEConfig
from .datasets import available_datasets, load_dataset
from .distributions import LIKELIHOODS, POSTERIORS, PRIORS
from .executors import EXECUTORS, binarize_batch
from .layers import ACTIVATIONS
from .model import VAE, TrainingDiverged, format_epoch, load

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.csv"
EVALUATION_FILE = "evaluation.json"
METRICS_COLUMNS = ("epoch", "train_loss", "val_loss", "seconds")
DEFAULT_DATA = "fashion-mnist"

# The options a run keeps for life: a resumed run takes them from config.json.
MODEL_OPTIONS = ("latent_dim", "hidden", "activation", "posterior", "likelihood", "prior", "seed")
TRAINING_OPTIONS = ("data", "limit", "batch_size", "lr", "weight_decay", "binarize")


# ---------------------------------------------------------------------- errors
class RunError(click.ClickException):
    """A problem the user can fix, shown as one line."""

    def __init__(self, message: str):
        super().__init__(_one_line(message))


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


@contextlib.contextmanager
def user_errors():
    """Turn the library's validation errors into one-line CLI errors (no traceback).

    DatasetError and CheckpointError are ValueErrors; the model raises ValueError with
    messages written for users.  OSError covers unreadable or unwritable paths."""
    try:
        yield
    except click.ClickException:
        raise
    except (ValueError, TrainingDiverged, OSError) as exc:
        if os.environ.get("CUPYVAE_DEBUG"):
            raise
        raise RunError(_describe(exc)) from None


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


# ---------------------------------------------------------------------- option parsing
def _parse_hidden(_ctx, _param, value: str) -> tuple[int, ...]:
    if value is None:
        return value
    if value.strip().lower() in ("", "none"):
        return ()
    try:
        widths = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of layer widths "
                                 "(e.g. 500,500)") from None
    if any(w < 1 for w in widths):
        raise click.BadParameter(f"layer widths must be positive, got {value!r}")
    return widths


def _parse_activation(_ctx, _param, value: str):
    if value is None:
        return value
    names = tuple(part.strip() for part in value.split(","))
    unknown = [name for name in names if name not in ACTIVATIONS]
    if unknown:
        raise click.BadParameter(f"unknown activation {unknown[0]!r}; choose from "
                                 f"{', '.join(ACTIVATIONS.names())} (or a comma list, one per layer)")
    return names[0] if len(names) == 1 else names


def _registry_choice(registry) -> click.Choice:
    return click.Choice(registry.names())


def _device_choice() -> click.Choice:
    return click.Choice(["auto", *EXECUTORS.names()])


# ---------------------------------------------------------------------- run folders
def _read_config(run_dir: Path) -> dict:
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist")
    if not path.is_file():
        raise RunError(f"{run_dir} is not a cupyvae run folder (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
        VAEConfig(**config["model"])   # validates the model section
        missing = [key for key in (*TRAINING_OPTIONS, "epochs") if key not in config["training"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RunError(f"{path} is damaged ({type(exc).__name__}: {exc})") from None
    if missing:
        raise RunError(f"{path} is damaged: its training section lacks {', '.join(missing)}")
    return config


def _load_run(run_dir: Path, device: str, execution: str | None = None) -> tuple[dict, VAE]:
    """config.json and the model of its checkpoint (CheckpointError names the file)."""
    config = _read_config(run_dir)
    model = load(run_dir / CHECKPOINT_FILE, device=device, execution=execution)
    if _model_section(model.config) != _normalised(config["model"]):
        raise RunError(f"{run_dir / CHECKPOINT_FILE} does not belong to {run_dir / CONFIG_FILE}: "
                       "their model configs differ")
    return config, model


def _model_section(config: VAEConfig) -> dict:
    return _normalised(json.loads(config.to_json()))


def _normalised(section: dict) -> dict:
    """JSON round trip, so tuples and lists compare equal."""
    return json.loads(json.dumps(section))


def _write_json(path: Path, content: dict) -> None:
    write_atomic(path, (json.dumps(content, indent=2) + "\n").encode())


def _write_metrics(path: Path, history: dict) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRICS_COLUMNS)
    for row in zip(*(history[column] for column in METRICS_COLUMNS)):
        writer.writerow(["" if value is None else value for value in row])
    write_atomic(path, buffer.getvalue().encode())


def _run_files() -> list[str]:
    from .plots import PLOT_FILES
    return [CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE, EVALUATION_FILE, *PLOT_FILES.values()]


def _refuse_occupied_run_folder(run_dir: Path, force: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir} exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not force:
        raise RunError(f"run folder {run_dir} already exists and is not empty; use --resume "
                       "to continue it, --force to overwrite it, or another --out")


def _clear_run_files(run_dir: Path) -> None:
    """Only cupyvae's own files go: a mistyped --out --force must not wipe a directory."""
    for name in _run_files():
        (run_dir / name).unlink(missing_ok=True)


def _default_run_dir(data: str) -> Path:
    stem = Path(data).stem if data.lower().endswith((".npy", ".npz")) else data
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---------------------------------------------------------------------- data
def _dataset_reference(data: str) -> str:
    """Registered names stay names; files become absolute paths, so config.json works
    from any directory."""
    path = Path(data).expanduser()
    if data in available_datasets() or not (path.suffix.lower() in (".npy", ".npz") or path.exists()):
        return data   # a name (or a typo, which load_dataset reports with the valid names)
    return str(path.resolve())


def _check_data(model: VAE, x: np.ndarray, what: str) -> np.ndarray:
    """Validate data against the model before anything is written or trained, with the
    model's own boundary check, so the CLI and the library accept exactly the same data."""
    return model.validate_data(x, what)


def _validation_split(model: VAE, dataset, binarize: bool) -> np.ndarray | None:
    """The test split, checked, then binarized the way fit binarizes its validation set
    (so evaluate reproduces the last val_loss); None when there is no test split."""
    if len(dataset.x_test) == 0:
        return None
    x_test = _check_data(model, dataset.x_test, f"validation data ({dataset.name}, test split)")
    return binarize_batch(x_test, model.config.seed, 0) if binarize else x_test


# ---------------------------------------------------------------------- the commands
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cupyvae")
def main():
    """Train and inspect variational autoencoders (cupyvae).

    Quick start:  cupyvae train --limit 6000 --epochs 5 --out runs/quick

    Set CUPYVAE_DEBUG=1 to see Python tracebacks behind error messages.
    """


@main.command()
@click.option("--data", default=DEFAULT_DATA, show_default=True,
              help=f"Dataset name ({', '.join(available_datasets())}) or a .npy/.npz file. "
                   "Training uses its train split; its test split is the validation set.")
@click.option("--latent-dim", type=click.IntRange(min=1), default=2, show_default=True,
              help="Latent dimensions.")
@click.option("--hidden", default="200", show_default=True, callback=_parse_hidden,
              help="Hidden layer widths of the encoder (the decoder mirrors them), comma-separated; "
                   "'none' for no hidden layer.")
@click.option("--activation", default="relu", show_default=True, callback=_parse_activation,
              help=f"Hidden activation: one of {', '.join(ACTIVATIONS.names())}, or a comma list "
                   "with one per hidden layer.")
@click.option("--posterior", type=_registry_choice(POSTERIORS), default="gaussian", show_default=True,
              help="Approximate posterior q(z|x).")
@click.option("--likelihood", type=_registry_choice(LIKELIHOODS), default="bernoulli",
              show_default=True, help="Likelihood p(x|z); gaussian-real and laplace take any real "
              "data, discretized-logistic 8-bit data (k/255), the others data in [0, 1].")
@click.option("--prior", type=_registry_choice(PRIORS), default="normal", show_default=True,
              help="Prior p(z).")
@click.option("--epochs", type=click.IntRange(min=1), default=50, show_default=True,
              help="Total epochs (with --resume: train until the run has this many).")
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True,
              help="Examples per Adam step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Adam learning rate.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Adam weight decay.")
@click.option("--binarize/--no-binarize", default=False, show_default=True,
              help="Dynamic binarization: every batch is resampled as x ~ Bernoulli(x) "
                   "(the validation set is binarized once).")
@click.option("--device", type=_device_choice(), default="auto", show_default=True,
              help="Where to train; auto picks cuda when a GPU is usable, else cpu.")
@click.option("--execution", type=click.Choice(["auto", "eager", "graph"]), default="auto",
              show_default=True,
              help="Kernel devices only: replay each training step from a CUDA graph, or launch "
                   "eagerly; auto is graph on cuda. Both give the same numbers.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the initialization and all training noise.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N training examples (for quick runs).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Run folder [default: runs/<data>-<timestamp>].")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its checkpoint, with its config.json, "
                   "until it has --epochs epochs.")
@click.option("--force", is_flag=True,
              help="Overwrite the run files in an existing, non-empty --out folder.")
@click.pass_context
def train(ctx, **options):
    """Train a VAE and write a run folder (config.json, checkpoint.safetensors,
    metrics.csv, plots).

    The validation loss is measured on the dataset's test split after every epoch.
    A checkpoint is written after every epoch; Ctrl-C keeps the last complete one, and
    `--resume` continues from it.
    """
    with user_errors():
        run = _resume_run(ctx, options) if options["resume"] else _new_run(options)
        if run is not None:
            _train_run(*run)


def _new_run(options: dict):
    if options["force"] and options["resume"]:
        raise click.UsageError("--force and --resume exclude each other")
    run_dir = options["out"] or _default_run_dir(options["data"])
    _refuse_occupied_run_folder(run_dir, options["force"])
    data = _dataset_reference(options["data"])
    dataset = load_dataset(data)
    model = VAE(dataset.data_shape, latent_dim=options["latent_dim"], hidden=options["hidden"],
                activation=options["activation"], posterior=options["posterior"],
                likelihood=options["likelihood"], prior=options["prior"],
                device=options["device"], seed=options["seed"],
                execution=_execution(options["execution"]))
    training = {name: options[name] for name in TRAINING_OPTIONS}
    training.update(data=data, epochs=options["epochs"], device=options["device"])
    x_train, x_val = _training_data(model, dataset, training)
    config = {
        "cupyvae_version": __version__,
        "model": _model_section(model.config),
        "training": training,
        "dataset": {"name": dataset.name, "train_examples": len(x_train),
                    "validation": "test split",
                    "validation_examples": 0 if x_val is None else len(x_val)},
    }
    config["command"] = _rerun_command(config, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _clear_run_files(run_dir)
    _write_json(run_dir / CONFIG_FILE, config)
    return run_dir, config, model, dataset, x_train, x_val


def _resume_run(ctx, options: dict):
    if options["force"]:
        raise click.UsageError("--force and --resume exclude each other")
    run_dir = options["out"]
    if run_dir is None:
        raise click.UsageError("--resume needs --out RUN_DIR, the run folder to continue")
    config = _read_config(run_dir)
    _refuse_changed_options(ctx, options, config)
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise RunError(f"{run_dir} has no {CHECKPOINT_FILE}: no epoch was completed; "
                       "start it again with --force")
    config, model = _load_run(run_dir, options["device"], _execution(options["execution"]))
    done = len(model.history["epoch"])
    if done >= options["epochs"]:
        click.echo(f"{run_dir} already has {done} epochs (--epochs {options['epochs']}); nothing "
                   f"to train (`cupyvae plot {shlex.quote(str(run_dir))}` rewrites its plots)")
        return None
    dataset = load_dataset(config["training"]["data"])
    x_train, x_val = _training_data(model, dataset, config["training"])
    config["training"].update(epochs=options["epochs"], device=options["device"])
    config["command"] = _rerun_command(config, run_dir)
    _write_json(run_dir / CONFIG_FILE, config)
    return run_dir, config, model, dataset, x_train, x_val


def _refuse_changed_options(ctx, options: dict, config: dict) -> None:
    """A resumed run keeps its options; silently ignoring a different --lr would mislead."""
    stored = {**config["model"], **config["training"]}
    for name in MODEL_OPTIONS + TRAINING_OPTIONS:
        if ctx.get_parameter_source(name) != click.core.ParameterSource.COMMANDLINE:
            continue
        given = _dataset_reference(options[name]) if name == "data" else options[name]
        if _normalised({"v": given}) != _normalised({"v": stored.get(name)}):
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(
                f"{flag} {options[name]} differs from the run's {stored.get(name)} "
                f"({CONFIG_FILE}); a resumed run keeps its options (only --epochs and --device "
                "may change)")


def _execution(choice: str) -> str | None:
    """'auto' leaves the choice to the device (graph on cuda, eager elsewhere)."""
    return None if choice == "auto" else choice


def _training_data(model: VAE, dataset, training: dict):
    """(x_train limited to --limit, validation split), both checked against the model."""
    x_train = dataset.x_train[:training["limit"]] if training["limit"] else dataset.x_train
    x_train = _check_data(model, x_train, f"training data ({dataset.name}, train split)")
    if training["batch_size"] > len(x_train):
        raise RunError(f"--batch-size {training['batch_size']} is larger than the training set "
                       f"({len(x_train)} examples of {dataset.name})")
    x_val = _validation_split(model, dataset, training["binarize"])
    if x_val is None:
        click.echo(f"cupyvae: {dataset.name} has no test split; training without validation",
                   err=True)
    return x_train, x_val


def _rerun_command(config: dict, run_dir: Path) -> str:
    """The full `cupyvae train` command line that repeats this run, for config.json."""
    model, training = config["model"], config["training"]
    activation = model["activation"]
    words = ["cupyvae", "train", "--data", training["data"],
             "--latent-dim", model["latent_dim"], "--hidden", ",".join(map(str, model["hidden"])) or "none",
             "--activation", activation if isinstance(activation, str) else ",".join(activation),
             "--posterior", model["posterior"], "--likelihood", model["likelihood"],
             "--prior", model["prior"], "--epochs", training["epochs"],
             "--batch-size", training["batch_size"], "--lr", training["lr"],
             "--weight-decay", training["weight_decay"],
             "--binarize" if training["binarize"] else "--no-binarize",
             "--device", training["device"], "--seed", model["seed"]]
    if training["limit"]:
        words += ["--limit", training["limit"]]
    return shlex.join(map(str, [*words, "--out", run_dir]))


def _train_run(run_dir: Path, config: dict, model: VAE, dataset, x_train, x_val) -> None:
    training = config["training"]
    done = len(model.history["epoch"])
    target = training["epochs"]
    click.echo(f"training {model!r} on {dataset.name}: {len(x_train)} examples, "
               f"epochs {done + 1}-{target}, run folder {run_dir}", err=True)
    try:
        if target > done:
            _fit_with_progress(model, x_train, x_val, training, run_dir, done, target)
        click.echo("writing plots ...", err=True)
        from .plots import write_all
        write_all(model, dataset, model.history, run_dir)
    except KeyboardInterrupt:
        _report_interrupt(run_dir, config)
    except TrainingDiverged as exc:
        kept = (f"The checkpoint of the last good epoch is kept in {run_dir / CHECKPOINT_FILE}."
                if model.history["epoch"] else "No epoch completed, so there is no checkpoint.")
        raise RunError(f"{exc} {kept}") from None
    epochs = len(model.history["epoch"])
    click.echo(f"done: {run_dir} ({epochs} epoch{'' if epochs == 1 else 's'}); "
               f"next: cupyvae evaluate {shlex.quote(str(run_dir))}")


def _fit_with_progress(model: VAE, x_train, x_val, training: dict, run_dir: Path,
                       done: int, target: int) -> None:
    """One fit() call for the remaining epochs (the data are checked and, on a GPU,
    uploaded once), a progress bar per epoch, metrics and the epoch line after each."""
    batches = len(x_train) // training["batch_size"]
    bars = contextlib.ExitStack()
    bar = bars.enter_context(_progress_bar(batches, f"epoch {done + 1}/{target}"))

    def after_epoch(record: dict) -> None:
        nonlocal bar
        bars.close()
        _write_metrics(run_dir / METRICS_FILE, model.history)
        click.echo(format_epoch(record))
        if record["epoch"] < target:
            bar = bars.enter_context(_progress_bar(batches, f"epoch {record['epoch'] + 1}/{target}"))

    with bars:
        model.fit(x_train, x_val, epochs=target - done, batch_size=training["batch_size"],
                  lr=training["lr"], weight_decay=training["weight_decay"],
                  binarize=training["binarize"], checkpoint=run_dir / CHECKPOINT_FILE,
                  progress=lambda n: bar.update(n), on_epoch=after_epoch)


@contextlib.contextmanager
def _progress_bar(length: int, label: str):
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield bar
    if sys.stderr.isatty():   # erase the finished bar: the epoch line replaces it
        sys.stderr.write("\x1b[1A\x1b[2K")
        sys.stderr.flush()


def _checkpoint_history(path: Path) -> dict | None:
    try:
        _tensors, meta = read_checkpoint(path)
        return meta["history"]
    except (CheckpointError, KeyError):
        return None


def _report_interrupt(run_dir: Path, config: dict) -> None:
    """Say which epoch the checkpoint holds, read back from the file itself (Ctrl-C may
    have landed between writing it and updating metrics.csv), and align metrics.csv."""
    history = _checkpoint_history(run_dir / CHECKPOINT_FILE)
    saved_epoch = len(history["epoch"]) if history else 0
    if history:
        _write_metrics(run_dir / METRICS_FILE, history)
    target = config["training"]["epochs"]
    if saved_epoch == 0:
        message = ("interrupted before the first epoch finished; no checkpoint was written. "
                   f"Start again with: {config['command']} --force")
    elif saved_epoch >= target:
        message = (f"interrupted while writing the plots; training is complete (epoch {saved_epoch}"
                   f" is in {run_dir / CHECKPOINT_FILE}). Write the plots with: cupyvae plot "
                   f"{shlex.quote(str(run_dir))}")
    else:
        message = (f"interrupted; the last complete checkpoint (epoch {saved_epoch}) is kept in "
                   f"{run_dir / CHECKPOINT_FILE}. Continue with: cupyvae train --resume "
                   f"--out {shlex.quote(str(run_dir))} --epochs {target}")
    click.echo("\n" + message, err=True)
    sys.exit(130)   # the conventional status of a process stopped by SIGINT


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--device", type=_device_choice(), default="auto", show_default=True)
@click.option("--iw-samples", type=click.IntRange(min=0), default=0, show_default=True,
              help="Importance samples per example for the log-likelihood estimate (0 = skip).")
def evaluate(run_dir: Path, device: str, iw_samples: int):
    """Test-set mean negative ELBO (and, with --iw-samples K, the importance-sampled
    log-likelihood) of a trained run, in nats per example and bits per dimension; prints
    them and writes RUN_DIR/evaluation.json (bits_per_dim_basis says what bits/dim means)."""
    with user_errors():
        config, model = _load_run(run_dir, device)
        dataset = load_dataset(config["training"]["data"])
        x_test = _validation_split(model, dataset, config["training"]["binarize"])
        if x_test is None:
            raise RunError(f"dataset {dataset.name} has no test split to evaluate on")
        result = {"dataset": dataset.name, "split": "test", "examples": len(x_test),
                  "binarized": config["training"]["binarize"],
                  "epochs": len(model.history["epoch"]),
                  "negative_elbo": model.loss(x_test),
                  "bits_per_dim_basis": model.bits_per_dim_basis(x_test)}
        result["negative_elbo_bits_per_dim"] = float(model.bits_per_dim(-result["negative_elbo"], x_test))
        click.echo(f"test negative ELBO: {result['negative_elbo']:.4f} nats per example, "
                   f"{result['negative_elbo_bits_per_dim']:.4f} bits/dim "
                   f"({len(x_test)} examples of {dataset.name})")
        if iw_samples:
            log_px = model.log_likelihood(x_test, n_samples=iw_samples)
            result.update(iw_samples=iw_samples, log_likelihood=float(np.mean(log_px)))
            result["log_likelihood_bits_per_dim"] = float(model.bits_per_dim(result["log_likelihood"], x_test))
            click.echo(f"test log-likelihood (importance sampled, K={iw_samples}): "
                       f"{result['log_likelihood']:.4f} nats per example, "
                       f"{result['log_likelihood_bits_per_dim']:.4f} bits/dim")
        click.echo(f"bits/dim: {result['bits_per_dim_basis']}", err=True)
        _write_json(run_dir / EVALUATION_FILE, result)
        click.echo(f"wrote {run_dir / EVALUATION_FILE}", err=True)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-n", "n", type=click.IntRange(min=1), default=64, show_default=True,
              help="Number of samples.")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), required=True,
              help="FILE.npy (the array, shape (n, *data_shape)) or FILE.png (an image grid).")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Sampling seed [default: the model's seed].")
@click.option("--device", type=_device_choice(), default="auto", show_default=True)
def sample(run_dir: Path, n: int, output: Path, seed, device: str):
    """Draw samples from the prior and decode them (likelihood means)."""
    writers = {".npy": _write_sample_array, ".png": _write_sample_grid}
    writer = writers.get(output.suffix.lower())
    if writer is None:
        raise click.BadParameter(f"{output}: the file must end in {' or '.join(writers)}",
                                 param_hint="-o")
    with user_errors():
        _config, model = _load_run(run_dir, device)
        writer(model.sample(n, seed=seed), output, model)
        click.echo(f"wrote {n} samples to {output}")


def _write_sample_array(drawn: np.ndarray, output: Path, _model) -> None:
    buffer = io.BytesIO()
    np.save(buffer, drawn)
    write_atomic(output, buffer.getvalue())


def _write_sample_grid(drawn: np.ndarray, output: Path, model) -> None:
    from .plots import image_grid
    image_grid(drawn, output, data_shape=model.config.data_shape,
               title=f"{len(drawn)} samples from the prior")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--device", type=_device_choice(), default="auto", show_default=True)
def plot(run_dir: Path, device: str):
    """(Re)write all plots of a run into its folder."""
    with user_errors():
        config, model = _load_run(run_dir, device)
        dataset = load_dataset(config["training"]["data"])
        from .plots import write_all
        for path in write_all(model, dataset, model.history, run_dir):
            click.echo(f"wrote {path}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--save", "save", type=click.Path(path_type=Path), default=None,
              help="Render the explorer figure to this PNG instead of opening a window; "
                   "works without a display.")
@click.option("--at", "at", default=None, metavar="Z1,Z2,...",
              help="Initial latent point, comma-separated [default: all 0, the prior mean].")
@click.option("--device", type=_device_choice(), default="auto", show_default=True)
def explore(run_dir: Path, save, at, device: str):
    """Interactive window: one slider per latent dimension (at most 10; the others stay
    at 0) and the decoded image, updated live."""
    from . import plots
    with user_errors():
        if save is None:
            _require_display()   # before loading anything: fail fast
        _config, model = _load_run(run_dir, device)
        z = _parse_latent_point(at, model.config.latent_dim)
        if model.config.latent_dim > plots.MAX_SLIDERS:
            click.echo(f"note: {model.config.latent_dim} latent dimensions; sliders for the first "
                       f"{plots.MAX_SLIDERS} only, the others stay at "
                       f"{'their --at values' if at else '0'}", err=True)
        if save is not None:
            click.echo(f"wrote {plots.save_explorer(model, save, z=z)}")
        else:
            plots.explore(model, z=z)


def _parse_latent_point(text: str | None, latent_dim: int) -> np.ndarray | None:
    if text is None:
        return None
    try:
        z = np.array([float(part) for part in text.split(",")], dtype=np.float32)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers",
                                 param_hint="--at") from None
    if z.shape != (latent_dim,) or not np.isfinite(z).all():
        raise click.BadParameter(f"needs {latent_dim} finite numbers (the latent dimension), "
                                 f"got {text!r}", param_hint="--at")
    from .plots import MAX_SLIDERS, SLIDER_RANGE
    if np.abs(z[:MAX_SLIDERS]).max() > SLIDER_RANGE:
        raise click.BadParameter(f"the sliders span [-{SLIDER_RANGE:g}, {SLIDER_RANGE:g}]; "
                                 f"got {text!r}", param_hint="--at")
    return z


def _require_display() -> None:
    import matplotlib
    import matplotlib.pyplot  # noqa: F401  (resolves the default backend)
    backend = matplotlib.get_backend().lower()
    if backend not in _non_interactive_backends():
        return
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        reason = (f"matplotlib's backend {backend!r} is non-interactive "
                  "(choose one with MPLBACKEND, e.g. MPLBACKEND=TkAgg)")
    else:
        reason = f"no display (DISPLAY is not set and matplotlib's backend is {backend!r})"
    raise RunError(f"cannot open the explorer window: {reason}; use --save FILE.png to "
                   "render the explorer to a file instead")


def _non_interactive_backends() -> set[str]:
    try:   # matplotlib >= 3.9
        from matplotlib.backends import BackendFilter, backend_registry
        names = backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE)
    except ImportError:
        from matplotlib import rcsetup
        names = rcsetup.non_interactive_bk
    return {name.lower() for name in names}

if __name__ == "__main__":
    main()
