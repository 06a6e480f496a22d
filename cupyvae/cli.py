"""The `cupyvae` command line: train, evaluate, sample, plot and explore VAEs.

A thin layer: it parses the command line and calls the API (cupyvae.VAE) and the run
folder module (cupyvae.runs), which holds everything about a run folder.  The flags of
`train` are generated from the fields of the option dataclasses (cupyvae.runs.RunOptions,
cupyvae.config.VAEConfig, cupyvae.training.TrainingOptions): one `--<name>` per field, with
the field's help and validation, so the CLI, the API and config.json accept the same values.

Every user mistake ends in a one-line message and a non-zero exit status, never a
traceback; set CUPYVAE_DEBUG=1 to see the traceback anyway.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path

import click
import numpy as np

from . import __version__, runs
from .config import VAEConfig
from .executors import EXECUTORS
from .model import TrainingDiverged, format_epoch
from .options import OptionError, cli_fields
from .training import TrainingOptions

OPTION_CLASSES = (runs.RunOptions, VAEConfig, TrainingOptions)


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
        raise RunError(_describe(exc)) from None


def _describe(exc: Exception) -> str:
    if isinstance(exc, OptionError):
        return f"--{exc.field.replace('_', '-')} {_shown(exc.value)}: {exc.rule}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


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
    return click.Choice(["auto", *EXECUTORS.names()])


# ---------------------------------------------------------------------- progress
class BarReporter(runs.Reporter):
    """A progress bar per epoch on stderr, and the epoch's line on stdout."""

    def __init__(self):
        self._bars = contextlib.ExitStack()
        self._bar = None

    def message(self, text: str) -> None:
        click.echo(text, err=True)

    def epoch_started(self, epoch: int, target: int, batches: int) -> None:
        self._bar = self._bars.enter_context(_progress_bar(batches, f"epoch {epoch}/{target}"))

    def batches_done(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def epoch_finished(self, record: dict) -> None:
        self.close()
        click.echo(format_epoch(record))

    def close(self) -> None:
        self._bars.close()
        self._bar = None


@contextlib.contextmanager
def _progress_bar(length: int, label: str):
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield bar
    if sys.stderr.isatty():   # erase the finished bar: the epoch line replaces it
        sys.stderr.write("\x1b[1A\x1b[2K")
        sys.stderr.flush()


# ---------------------------------------------------------------------- the commands
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cupyvae")
def main():
    """Train and inspect variational autoencoders (cupyvae).

    Quick start:  cupyvae train --limit 6000 --epochs 5 --out runs/quick

    Set CUPYVAE_DEBUG=1 to see Python tracebacks behind error messages.
    """


@main.command()
@option_flags(*OPTION_CLASSES)
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Run folder [default: runs/<data>-<timestamp>].")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its checkpoint, with its config.json, "
                   "until it has --epochs epochs.")
@click.option("--force", is_flag=True,
              help="Overwrite the run files in an existing, non-empty --out folder.")
@click.pass_context
def train(ctx, out, resume, force, **values):
    """Train a VAE and write a run folder (config.json, checkpoint.safetensors,
    metrics.csv, plots).

    The validation loss is measured on the dataset's test split after every epoch.
    A checkpoint is written after every epoch; Ctrl-C (or SIGTERM) keeps the last complete
    one, and `--resume` continues from it.
    """
    if force and resume:
        raise click.UsageError("--force and --resume exclude each other")
    if resume and out is None:
        raise click.UsageError("--resume needs --out RUN_DIR, the run folder to continue")
    reporter = BarReporter()
    with user_errors():
        if resume:
            run = runs.resume_run(out, given_on_command_line(ctx, OPTION_CLASSES))
            if run is None:
                click.echo(f"{out} already has its epochs (--epochs {values['epochs']}); nothing to "
                           f"train (`cupyvae plot {shlex.quote(str(out))}` rewrites its plots)")
                return
        else:
            model_options = {f.name: values[f.name] for f in cli_fields(VAEConfig)}
            VAEConfig(data_shape=(1,), **model_options)      # refuse bad flags before loading data
            run = runs.start_run(out, model_options, build_options(TrainingOptions, values),
                                 build_options(runs.RunOptions, values), force=force)
        if run.x_val is None:
            click.echo(f"cupyvae: {run.dataset.name} has no test split; training without "
                       "validation", err=True)
        try:
            run.train(reporter)
        except runs.RunInterrupted as exc:
            reporter.close()
            click.echo(f"\n{exc}", err=True)
            sys.exit(exc.exit_code)
        finally:
            reporter.close()
    epochs = len(run.model.history["epoch"])
    click.echo(f"done: {run.folder} ({epochs} epoch{'' if epochs == 1 else 's'}); "
               f"next: cupyvae evaluate {shlex.quote(str(run.folder))}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--device", type=_device_choice(), default="auto", show_default=True)
@click.option("--iw-samples", type=click.IntRange(min=0), default=0, show_default=True,
              help="Importance samples per example for the log-likelihood estimate (0 = skip).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="BLAS threads of the NumPy path  [default: the run's training count]")
def evaluate(run_dir: Path, device: str, iw_samples: int, threads: int | None):
    """Test-set mean negative ELBO (and, with --iw-samples K, the importance-sampled
    log-likelihood) of a trained run; prints them and writes RUN_DIR/evaluation.json."""
    with user_errors():
        result = runs.evaluate_run(run_dir, device, iw_samples, threads=threads)
    click.echo(f"test negative ELBO: {result['negative_elbo']:.4f} nats per example "
               f"({result['examples']} examples of {result['dataset']})")
    if iw_samples:
        click.echo(f"test log-likelihood (importance sampled, K={iw_samples}): "
                   f"{result['log_likelihood']:.4f} nats per example")
    click.echo(f"wrote {run_dir / runs.EVALUATION_FILE}", err=True)


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
    if output.suffix.lower() not in runs.SAMPLE_WRITERS:
        raise click.BadParameter(f"{output}: the file must end in "
                                 f"{' or '.join(runs.SAMPLE_WRITERS)}", param_hint="-o")
    with user_errors():
        runs.write_samples(run_dir, n, output, seed=seed, device=device)
    click.echo(f"wrote {n} samples to {output}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--device", type=_device_choice(), default="auto", show_default=True)
def plot(run_dir: Path, device: str):
    """(Re)write all plots of a run into its folder."""
    with user_errors():
        for path in runs.write_plots(run_dir, device):
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
        _config, model = runs.load_run(run_dir, device)
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
