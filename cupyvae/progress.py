"""Progress of long passes: what training, evaluation and encoding tell their user.

A `Reporter` receives every event of a long computation; the base class ignores them all,
so library code reports unconditionally and the caller decides what is shown:

    reporter.epoch_started(3, 10, 600)          # epoch 3 of 10, 600 batches
    reporter.batches_done(1)                     # after every batch
    with reporter.task("validation", 10000) as advance:
        model.loss(x_val, progress=advance)     # advance(n): n more examples are done
    reporter.epoch_finished(record)

`ConsoleReporter` draws it on a console: progress bars (click.progressbar) and notes on
stderr, one line per finished epoch on the stream it is given.  On a terminal a bar is
live and erased when its pass ends; elsewhere (a log file, a pipe) click prints each
pass's label once, so logs show which pass ran without carriage-return noise.

`VAE.fit(verbose=...)` builds one from a verbose level (`reporter_for_level`); the CLI
builds one with bars unless `--quiet`.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, TextIO

import click

Advance = Callable[[int], None]


def _ignore(_n: int) -> None:
    pass


class Reporter:
    """Every event of a long computation; this base shows nothing."""

    def message(self, text: str) -> None:
        """A note for the user (what is about to happen, a notice)."""

    def epoch_started(self, epoch: int, last_epoch: int, batches: int) -> None:
        """Training epoch `epoch` (1-based, counted over the model's whole history) of
        `last_epoch` starts; it has `batches` optimizer steps."""

    def batches_done(self, n: int) -> None:
        """n more batches of the current epoch are done."""

    def epoch_finished(self, record: dict) -> None:
        """An epoch ended; `record` is its history row (epoch, train_loss, val_loss, ...)."""

    @contextlib.contextmanager
    def task(self, label: str, total: int) -> Iterator[Advance]:
        """A pass over `total` examples (validation, evaluation, encoding, importance
        sampling); the body calls the yielded advance(n) as n more examples are done."""
        yield _ignore


class ConsoleReporter(Reporter):
    """Bars and notes on stderr, finished epochs as one line each on `epoch_stream`.

    bars=False: no bars; messages=False: no notes (the CLI's --quiet turns both off);
    epoch_stream=None: no epoch lines."""

    def __init__(self, bars: bool = True, messages: bool = True,
                 epoch_stream: TextIO | None = None):
        self.bars, self.messages, self.epoch_stream = bars, messages, epoch_stream
        self._epoch_bar = contextlib.ExitStack()
        self._advance_epoch: Advance = _ignore

    def message(self, text: str) -> None:
        if self.messages:
            click.echo(text, err=True)

    def epoch_started(self, epoch: int, last_epoch: int, batches: int) -> None:
        self.close()
        if self.bars:
            self._advance_epoch = self._epoch_bar.enter_context(
                _bar(batches, f"epoch {epoch}/{last_epoch}"))

    def batches_done(self, n: int) -> None:
        self._advance_epoch(n)

    def epoch_finished(self, record: dict) -> None:
        self.close()
        if self.epoch_stream is not None:
            from .model import format_epoch
            click.echo(format_epoch(record), file=self.epoch_stream)

    @contextlib.contextmanager
    def task(self, label: str, total: int) -> Iterator[Advance]:
        if not self.bars or total <= 0:
            yield _ignore
            return
        with _bar(total, label) as advance:
            yield advance

    def close(self) -> None:
        """End the epoch's bar (on Ctrl-C, before printing the interruption message)."""
        self._epoch_bar.close()
        self._advance_epoch = _ignore


class BatchCallback(Reporter):
    """Calls `progress(n)` after every n training batches (VAE.fit's `progress`)."""

    def __init__(self, progress: Advance):
        self.batches_done = progress


class _Fanout(Reporter):
    """Forwards every event to each of several reporters."""

    def __init__(self, reporters: list[Reporter]):
        self.reporters = reporters

    def message(self, text: str) -> None:
        for reporter in self.reporters:
            reporter.message(text)

    def epoch_started(self, epoch: int, last_epoch: int, batches: int) -> None:
        for reporter in self.reporters:
            reporter.epoch_started(epoch, last_epoch, batches)

    def batches_done(self, n: int) -> None:
        for reporter in self.reporters:
            reporter.batches_done(n)

    def epoch_finished(self, record: dict) -> None:
        for reporter in self.reporters:
            reporter.epoch_finished(record)

    @contextlib.contextmanager
    def task(self, label: str, total: int) -> Iterator[Advance]:
        with contextlib.ExitStack() as stack:
            advances = [stack.enter_context(r.task(label, total)) for r in self.reporters]

            def advance(n: int) -> None:
                for each in advances:
                    each(n)
            yield advance


def combine(*reporters: Reporter | None) -> Reporter:
    """One reporter for all the given ones (None and silent base Reporters are dropped)."""
    active = [r for r in reporters if r is not None and type(r) is not Reporter]
    if not active:
        return Reporter()
    return active[0] if len(active) == 1 else _Fanout(active)


def batch_callback(reporter: Reporter) -> Advance | None:
    """reporter.batches_done, or None for the silent base Reporter, so executors can skip
    progress bookkeeping that nobody reads."""
    return None if type(reporter) is Reporter else reporter.batches_done


def reporter_for_level(verbose: int | bool) -> Reporter:
    """`VAE.fit`'s verbose levels: 0 (False) nothing; 1 (True) one line per epoch on
    stderr; 2 also a live progress bar for every epoch and every validation pass."""
    if isinstance(verbose, bool):
        verbose = int(verbose)
    if not isinstance(verbose, int) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2 (or False/True), got {verbose!r}")
    if verbose == 0:
        return Reporter()
    return ConsoleReporter(bars=verbose >= 2, messages=True, epoch_stream=sys.stderr)


@contextlib.contextmanager
def _bar(total: int, label: str) -> Iterator[Advance]:
    """A click progress bar on stderr; on a terminal it is erased when the pass ends (the
    line that reports the result replaces it)."""
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update
    if sys.stderr.isatty():
        sys.stderr.write("\x1b[1A\x1b[2K")
        sys.stderr.flush()
