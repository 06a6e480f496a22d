"""The `cupyvae` command line: train, evaluate, encode, sample, plot and explore VAEs.

A thin layer: it parses the command line and calls the API (cupyvae.VAE) and the run
folder module (cupyvae.runs), which holds everything about a run folder.  The flags of
`train` are generated from the fields of the option dataclasses (cupyvae.runs.RunOptions,
cupyvae.config.VAEConfig, cupyvae.training.TrainingOptions): one `--<name>` per field, with
the field's help and validation, so the CLI, the API and config.json accept the same values.

Every user mistake ends in a one-line message and a non-zero exit status, never a
traceback; set CUPYVAE_DEBUG=1 to see the traceback anyway.

Results go to stdout; progress bars and notes go to stderr, and `--quiet` (every command,
one shared option) turns them off.  The "no usable CUDA GPU" notice appears once, for the commands
that choose a device for real work (train, evaluate, encode).
"""
from __future__ import annotations

import contextlib
import os
import shlex
import sys
import warnings
from pathlib import Path

import click
import numpy as np

from . import __version__, runs
from .config import VAEConfig
from .executors import NoGPUWarning
from .model import TrainingDiverged
from .options import UINT32_MAX, OptionError, cli_fields
from .progress import ConsoleReporter
from .threads import thread_count
from .training import TrainingOptions

OPTION_CLASSES = (runs.RunOptions, VAEConfig, TrainingOptions)


# ---------------------------------------------------------------------- errors
class CommandError(click.ClickException):
    """A problem the user can fix, shown as one line."""

    def __init__(self, message: str):
        super().__init__(_one_line(message))


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


@contextlib.contextmanager
def user_errors():
    """Turn the library's validation errors into one-line CLI errors (no traceback).

    DatasetError, CheckpointError, OptionError and runs.RunError are ValueErrors; the model
    raises ValueError with messages written for users.  OSError covers unreadable or
    unwritable paths."""
    try:
        yield
    except click.ClickException:
        raise
    except (ValueError, TrainingDiverged, OSError) as exc:
        if os.environ.get("CUPYVAE_DEBUG"):
            raise
        raise CommandError(_describe(exc)) from None


def _describe(exc: Exception) -> str:
    if isinstance(exc, OptionError):
        return f"{_flag(exc.field)} {runs.shown(exc.value)}: {exc.rule_text(_flag)}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


# ---------------------------------------------------------------------- generated flags
def option_flags(*classes):
    """Decorator: one click option per command-line field of `classes`, named --<field>,
    typed, defaulted and documented by the field itself."""
    fields = [f for cls in classes for f in cli_fields(cls)]
    names = [f.name for f in fields]
    duplicated = {name for name in names if names.count(name) > 1}
    if duplicated:
        raise RuntimeError(f"option fields defined twice: {sorted(duplicated)}")

    def decorate(command):
        for f in reversed(fields):
            command = click.option(*_flag_decls(f), **_flag_settings(f))(command)
        return command
    return decorate


def _flag_decls(f) -> list[str]:
    flag = "--" + f.name.replace("_", "-")
    if f.metadata["check"].click_type() is None:
        return [f"{flag}/--no-{f.name.replace('_', '-')}", f.name]
    return [flag, f.name]


def _flag_settings(f) -> dict:
    default = f.default
    if isinstance(default, tuple):          # shown and parsed like the user writes it
        default = ",".join(map(str, default)) or "none"
    settings = {"default": default, "show_default": default is not None, "help": f.metadata["help"]}
    click_type = f.metadata["check"].click_type()
    if click_type is not None:
        settings["type"] = click_type
    return settings


def given_on_command_line(ctx: click.Context, classes) -> dict:
    """The option fields the user typed, by name (the others hold their defaults)."""
    return {f.name: ctx.params[f.name] for cls in classes for f in cli_fields(cls)
            if ctx.get_parameter_source(f.name) == click.core.ParameterSource.COMMANDLINE}


def build_options(cls, values: dict):
    """`cls` from the parsed values of its fields (OptionError names the flag)."""
    return cls(**{f.name: values[f.name] for f in cli_fields(cls)})


def _device_choice() -> click.Choice:
    return click.Choice(runs.device_choices())


# ---------------------------------------------------------------------- progress
def console(quiet: bool) -> ConsoleReporter:
    """Progress bars and notes on stderr (none with --quiet); epoch lines on stdout."""
    return ConsoleReporter(bars=not quiet, messages=not quiet, epoch_stream=sys.stdout)


@contextlib.contextmanager
def device_notice(show: bool):
    """Show the NoGPUWarning as one 'cupyvae: ...' line on stderr (once), or not at all."""
    def show_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, NoGPUWarning):
            click.echo(f"cupyvae: {message}", err=True)
        else:
            previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        previous = warnings.showwarning
        warnings.simplefilter("once" if show else "ignore", NoGPUWarning)
        warnings.showwarning = show_line
        yield


# Eager, so it is parsed first and a note while parsing the others (a renamed choice,
# options.RegisteredName) can honour it.
quiet_option = click.option("--quiet", "-q", is_flag=True, is_eager=True,
                            help="No progress bars or notes on stderr (results and errors only).")
checkpoint_option = click.option(
    "--checkpoint", type=click.Choice(runs.CHECKPOINTS), default="best", show_default=True,
    help="best: the epoch with the lowest validation loss, kept when training with --patience "
         "(otherwise the last epoch); last: the last epoch.")


# ---------------------------------------------------------------------- the commands
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cupyvae")
def main():
    """Train and inspect variational autoencoders (cupyvae).

    Quick start:  cupyvae train --limit 6000 --epochs 5 --out runs/first-try

    Set CUPYVAE_DEBUG=1 to see Python tracebacks behind error messages.
    """


@main.command()
@option_flags(*OPTION_CLASSES)
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Run folder [default: runs/<data>-<timestamp>].")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its checkpoint, with its config.json, "
                   "until it has --epochs epochs (only --epochs, --patience, --device and "
                   "--execution may differ from the run's).")
@click.option("--force", is_flag=True,
              help="Overwrite the run files in an existing, non-empty --out folder.")
@quiet_option
@click.pass_context
def train(ctx, out, resume, force, quiet, **values):
    """Train a VAE and write a run folder (config.json, checkpoint.safetensors,
    metrics.csv, plots).

    The validation loss is measured after every epoch on the dataset's test split, or on
    a seeded random --val-fraction of the training set; --patience stops training when it
    stops improving.  A checkpoint is written after every epoch; Ctrl-C (or SIGTERM) keeps
    the last complete one, and `cupyvae train --resume --out RUN_DIR` continues from it.
    """
    if force and resume:
        raise click.UsageError("--force and --resume exclude each other")
    if resume and out is None:
        raise click.UsageError("--resume needs --out RUN_DIR, the run folder to continue")
    reporter = console(quiet)
    with user_errors(), device_notice(not quiet):
        if resume:
            changes = given_on_command_line(ctx, OPTION_CLASSES)
            run = runs.resume_run(out, changes)
            if run is None:
                click.echo(runs.finished_message(out, changes))
                return
        else:
            model_options = {f.name: values[f.name] for f in cli_fields(VAEConfig)}
            run = runs.start_run(out, model_options, build_options(TrainingOptions, values),
                                 build_options(runs.RunOptions, values), force=force)
        if not run.validated:
            reporter.message(f"cupyvae: {run.dataset.name} has no test split; training without "
                             "validation (--val-fraction takes a validation set from the "
                             "training data)")
        try:
            run.train(reporter)
        except runs.RunInterrupted as exc:
            reporter.close()
            click.echo(f"\n{exc}", err=True)
            sys.exit(exc.exit_code)
        finally:
            reporter.close()
    epochs = len(run.model.history["epoch"])
    stopped = " (stopped early)" if runs.early_stop_message(
        run.model.history, run.config.training.patience) else ""
    click.echo(f"done: {run.folder} ({epochs} epoch{'' if epochs == 1 else 's'}{stopped}); "
               f"next: cupyvae evaluate {shlex.quote(str(run.folder))}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--device", type=_device_choice(), default="auto", show_default=True)
@click.option("--iw-samples", type=click.IntRange(min=0, max=UINT32_MAX), default=0, show_default=True,
              help="Importance samples per example for the log-likelihood estimate (0 = skip).")
@click.option("--threads", type=thread_count.click_type(), default=None,
              help="BLAS threads of the NumPy path  [default: the run's training count]")
@checkpoint_option
@quiet_option
def evaluate(run_dir: Path, device: str, iw_samples: int, threads: int | None, checkpoint: str,
             quiet: bool):
    """Test-set mean negative ELBO (and, with --iw-samples K, the importance-sampled
    log-likelihood) of a trained run, in nats per example and bits per dimension; prints
    them and writes RUN_DIR/evaluation.json (bits_per_dim_basis says what bits/dim means)."""
    reporter = console(quiet)
    with user_errors(), device_notice(not quiet):
        result = runs.evaluate_run(run_dir, device, iw_samples, reporter, checkpoint=checkpoint,
                                   threads=threads)
    click.echo(f"test negative ELBO: {result['negative_elbo']:.4f} nats per example, "
               f"{result['negative_elbo_bits_per_dim']:.4f} bits/dim "
               f"({result['examples']} examples of {result['dataset']}, {result['checkpoint']}, "
               f"epoch {result['epochs']})")
    if iw_samples:
        click.echo(f"test log-likelihood (importance sampled, K={iw_samples}): "
                   f"{result['log_likelihood']:.4f} nats per example, "
                   f"{result['log_likelihood_bits_per_dim']:.4f} bits/dim")
    reporter.message(f"bits/dim: {result['bits_per_dim_basis']}")
    for key in ("note", "selection_note"):
        if key in result:
            click.echo(f"note: {result[key]}")
    reporter.message(f"wrote {run_dir / runs.EVALUATION_FILE}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), required=True,
              help="FILE.npy (the codes, (N, latent_dim) float32; labels beside it in "
                   "FILE.labels.npy) or FILE.csv (columns z1..zK, then label and label_name "
                   "where the data have labels).")
@click.option("--data", "data", default=None,
              help="Dataset name or .npy/.npz/.csv file to encode [default: the run's data].")
@click.option("--split", type=click.Choice(runs.ENCODE_SPLITS), default="all", show_default=True,
              help="all: the train split, then the test split (a .npy/.csv file's own row order).")
@click.option("--sample", is_flag=True,
              help="One draw z ~ q(z|x) per example instead of the posterior mean.")
@click.option("--device", type=_device_choice(), default="auto", show_default=True)
@checkpoint_option
@quiet_option
def encode(run_dir: Path, output: Path, data, split: str, sample: bool, device: str,
           checkpoint: str, quiet: bool):
    """Write the latent codes of a dataset (posterior means, or samples with --sample)
    under a trained run's model."""
    with user_errors(), device_notice(not quiet):      # encode_run checks -o before any work
        result = runs.encode_run(run_dir, output, data=data, split=split, sample=sample,
                                 device=device, checkpoint=checkpoint, reporter=console(quiet))
    for stale in result["removed"]:
        click.echo(f"removed {stale}: the labels of an earlier encode, not of these codes",
                   err=True)
    labels = " with labels" if result["labels"] else ""
    click.echo(f"wrote {result['examples']} {result['codes']} ({result['latent_dim']}-D){labels} "
               f"of {result['dataset']} ({result['split']}) to {', '.join(result['files'])}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-n", "n", type=click.IntRange(min=1), default=64, show_default=True,
              help="Number of samples.")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), default=None,
              help="FILE.npy (the array, shape (n, *data_shape)) or FILE.png (an image grid) "
                   "[default: RUN_DIR/samples-<n>.png].")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Sampling seed [default: the model's seed].")
@click.option("--device", type=_device_choice(), default="auto", show_default=True)
@checkpoint_option
@quiet_option
def sample(run_dir: Path, n: int, output, seed, device: str, checkpoint: str, quiet: bool):
    """Draw samples from the prior and decode them (likelihood means); a PNG is titled like
    the run's samples.png."""
    with user_errors(), device_notice(False):          # write_samples checks -o before any work
        output = runs.write_samples(run_dir, n, output, seed=seed, device=device,
                                    checkpoint=checkpoint)
    click.echo(f"wrote {n} samples to {output}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--device", type=_device_choice(), default="auto", show_default=True)
@checkpoint_option
@quiet_option
def plot(run_dir: Path, device: str, checkpoint: str, quiet: bool):
    """(Re)write all plots of a run into its folder."""
    with user_errors(), device_notice(False):
        for path in runs.write_plots(run_dir, device, checkpoint=checkpoint,
                                     reporter=console(quiet)):
            click.echo(f"wrote {path}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--save", "save", type=click.Path(path_type=Path), default=None,
              help="Render the explorer figure to this PNG instead of opening a window; "
                   "works without a display.")
@click.option("--at", "at", default=None, metavar="Z1,Z2,...",
              help="Initial latent point, comma-separated [default: the mean of the encoded "
                   "test set; with separate class clusters it can lie between them].")
@click.option("--device", type=_device_choice(), default="auto", show_default=True)
@checkpoint_option
@quiet_option
def explore(run_dir: Path, save, at, device: str, checkpoint: str, quiet: bool):
    """Interactive window: one slider per latent dimension (at most 10; the others stay
    fixed) and the decoded image, updated live.  The sliders start at the mean code of
    the run's test set and span where its codes lie (at least +-3)."""
    from . import plots
    reporter = console(quiet)
    with user_errors(), device_notice(False):
        if save is None:
            _require_display()   # before loading anything: fail fast
        else:
            runs.check_output_path(save, (".png",))
        config, model = runs.load_run(run_dir, device, checkpoint=checkpoint)
        z = _parse_latent_point(at, model.config.latent_dim)
        codes = runs.data_codes(config, model, reporter=reporter)
        start = "their --at values" if at else "the data's mean code"
        if z is None:
            z = codes.mean(axis=0)
        ranges = plots.slider_ranges(codes, z)
        if model.config.latent_dim > plots.MAX_SLIDERS:
            reporter.message(f"note: {model.config.latent_dim} latent dimensions; sliders for the "
                             f"first {plots.MAX_SLIDERS} only, the others stay at {start}")
        if save is not None:
            click.echo(f"wrote {plots.save_explorer(model, save, z=z, ranges=ranges, start=start)}")
        else:
            plots.explore(model, z=z, ranges=ranges, start=start,
                          title=f"cupyvae explore {run_dir}")


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
    raise CommandError(f"cannot open the explorer window: {reason}; use --save FILE.png to "
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
