"""BLAS threads (cupyvae.threads): the count asked for is the count in force inside every
call, the previous one is restored after, a run records its count, and a run resumed with
one thread repeats an uninterrupted one bit for bit."""
import json
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import cupyvae
from cupyvae import reference, runs
from cupyvae.executors import NumpyExecutor
from cupyvae.options import OptionError
from cupyvae.threads import _controller, blas_threads, default_threads
from cupyvae.training import TrainingOptions

TINY_MODEL = {"hidden": (8,), "latent_dim": 2, "seed": 1}


def numpy_blas_threads() -> list[int]:
    """The distinct thread counts threadpoolctl reads now from the BLAS libraries cupyvae
    limits (NumPy's, and any other loaded before cupyvae first limited)."""
    paths = {lib.filepath for lib in _controller().lib_controllers if lib.user_api == "blas"}
    return sorted({info["num_threads"] for info in threadpool_info() if info["filepath"] in paths})


def record_threads(monkeypatch, callables: dict) -> list:
    """Wrap the callables {owner: (name, ...)} so that every call appends the BLAS thread
    counts in force (numpy_blas_threads) to the returned list, all in call order."""
    seen = []
    for owner, names in callables.items():
        for name in names:
            original = getattr(owner, name)

            def recording(*args, _original=original, **kwargs):
                seen.append(numpy_blas_threads())
                return _original(*args, **kwargs)

            monkeypatch.setattr(owner, name, recording)
    return seen


def can_run_two_threads() -> bool:
    with threadpool_limits(limits=2, user_api="blas"):
        return numpy_blas_threads() == [2]


@pytest.fixture
def outer_two_threads():
    """An enclosing limit of 2 threads, so that a call asking for 1 is told apart from one
    that ignores the setting; skips where NumPy's BLAS cannot run 2."""
    if not can_run_two_threads():
        pytest.skip(f"NumPy's BLAS cannot be set to 2 threads here ({numpy_blas_threads()})")
    with threadpool_limits(limits=2, user_api="blas"):
        yield


def tiny_data(n=40, d=12, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.4).astype(np.float32)


def test_fit_runs_with_its_thread_count_and_restores_the_previous_one(outer_two_threads):
    model = cupyvae.VAE((12,), latent_dim=2, hidden=(8,), seed=0)
    seen_in_steps, seen_after_epochs = [], []
    model.fit(tiny_data(), epochs=2, batch_size=10, threads=1,
              progress=lambda n: seen_in_steps.append(numpy_blas_threads()),
              on_epoch=lambda record: seen_after_epochs.append(numpy_blas_threads()))
    assert seen_in_steps and all(t == [1] for t in seen_in_steps), seen_in_steps
    assert seen_after_epochs == [[1], [1]]
    assert numpy_blas_threads() == [2]


def test_fit_can_ask_for_more_threads_than_the_enclosing_limit():
    if not can_run_two_threads():
        pytest.skip(f"NumPy's BLAS cannot be set to 2 threads here ({numpy_blas_threads()})")
    with threadpool_limits(limits=1, user_api="blas"):
        model = cupyvae.VAE((12,), latent_dim=2, hidden=(8,), seed=0)
        seen = []
        model.fit(tiny_data(), epochs=1, batch_size=10, threads=2,
                  on_epoch=lambda record: seen.append(numpy_blas_threads()))
        assert seen == [[2]]
        assert numpy_blas_threads() == [1]


def test_validation_inside_fit_keeps_fits_count(outer_two_threads, monkeypatch):
    seen = record_threads(monkeypatch, {NumpyExecutor: ("loss_rows",)})
    model = cupyvae.VAE((12,), latent_dim=2, hidden=(8,), seed=0)
    model.fit(tiny_data(), tiny_data(seed=1), epochs=1, batch_size=10, threads=1)
    assert seen == [[1]]
    with threadpool_limits(limits=1, user_api="blas"):
        model.fit(tiny_data(), tiny_data(seed=1), epochs=1, batch_size=10, threads=2)
    assert seen == [[1], [2]]


@pytest.mark.parametrize("call", ["loss", "elbo_terms", "encode", "decode", "reconstruct",
                                  "sample", "sample_latent", "prior_components",
                                  "log_likelihood", "loss_and_grads"])
def test_every_inference_call_takes_the_threads_keyword(call, outer_two_threads, monkeypatch):
    seen = record_threads(monkeypatch, {
        NumpyExecutor: ("encode_raw", "decode_raw", "loss_rows", "loss_and_grads",
                        "log_likelihood", "sample_raw"),
        reference: ("mlp_forward",)})      # the VampPrior's pass over its pseudo-inputs too
    # The VampPrior encodes its pseudo-inputs for sample_latent and prior_components.
    model = cupyvae.VAE((12,), latent_dim=2, hidden=(8,), seed=0, prior="vamp",
                        prior_components=3)
    x, z = tiny_data(n=5), np.zeros((5, 2), np.float32)
    arguments = {"loss": (x,), "elbo_terms": (x,), "encode": (x,), "decode": (z,),
                 "reconstruct": (x,), "sample": (3,), "sample_latent": (3,),
                 "prior_components": (), "log_likelihood": (x, 2),
                 "loss_and_grads": (x, z)}[call]
    getattr(model, call)(*arguments, threads=1)
    assert seen and all(t == [1] for t in seen), seen
    assert numpy_blas_threads() == [2]
    with threadpool_limits(limits=1, user_api="blas"):
        seen.clear()
        getattr(model, call)(*arguments, threads=2)
        assert seen and all(t == [2] for t in seen), seen
    seen.clear()
    getattr(model, call)(*arguments)                    # None: the default count
    assert seen and all(t == [default_threads()] for t in seen), seen


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "2"])
def test_a_bad_thread_count_is_refused_naming_it(value):
    with pytest.raises(OptionError, match="training option threads = "):
        TrainingOptions(threads=value)
    model = cupyvae.VAE((12,), latent_dim=2, hidden=(8,), seed=0)
    with pytest.raises(OptionError, match=r"argument threads = .*: must be an integer >= 1"):
        model.encode(tiny_data(n=2), threads=value)


def test_nested_none_keeps_the_enclosing_count():
    with blas_threads(1) as outer:
        with blas_threads(None) as inner:
            assert inner == outer == 1


# ---------------------------------------------------------------------- run folders
@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    x = (np.random.default_rng(0).random((70, 4, 4)) < 0.4).astype(np.float32)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x_train=x[:60], x_test=x[60:])
    return path


def train_run(folder: Path, data: Path, epochs: int, threads: int | None) -> Path:
    run = runs.start_run(folder, TINY_MODEL,
                         TrainingOptions(epochs=epochs, batch_size=10, threads=threads),
                         runs.RunOptions(data=str(data), device="cpu"))
    run.train(runs.Reporter())
    return folder


def test_a_run_records_its_thread_count_even_the_default(tiny_npz, tmp_path):
    stored = lambda folder: json.loads((folder / runs.CONFIG_FILE).read_text())["training"]  # noqa: E731
    assert stored(train_run(tmp_path / "a", tiny_npz, 1, None))["threads"] == default_threads()
    assert stored(train_run(tmp_path / "b", tiny_npz, 1, 2))["threads"] == 2


def test_resume_trains_with_the_recorded_count(tiny_npz, tmp_path, monkeypatch):
    if not can_run_two_threads():
        pytest.skip(f"NumPy's BLAS cannot be set to 2 threads here ({numpy_blas_threads()})")
    seen = record_threads(monkeypatch, {NumpyExecutor: ("train_epoch",)})
    folder = train_run(tmp_path / "run", tiny_npz, 1, 2)
    with threadpool_limits(limits=1, user_api="blas"):
        runs.resume_run(folder, {"epochs": 2}).train(runs.Reporter())
    assert seen == [[2], [2]]


def test_a_one_thread_run_resumed_with_one_thread_is_bit_identical(tiny_npz, tmp_path,
                                                                   outer_two_threads, monkeypatch):
    seen = record_threads(monkeypatch, {NumpyExecutor: ("train_epoch",)})
    straight = train_run(tmp_path / "straight", tiny_npz, 3, 1)
    resumed = train_run(tmp_path / "resumed", tiny_npz, 1, 1)
    run = runs.resume_run(resumed, {"epochs": 3})     # no --threads: the recorded count
    run.train(runs.Reporter())
    assert seen == [[1]] * 6, seen
    a = cupyvae.load(straight / runs.CHECKPOINT_FILE)
    b = cupyvae.load(resumed / runs.CHECKPOINT_FILE)
    assert a.flat_params.tobytes() == b.flat_params.tobytes()
    for name, got, want in zip(("adam m", "adam v"), b._executor.host_moments(),
                               a._executor.host_moments()):
        assert got.tobytes() == want.tobytes(), name
    assert a.history["train_loss"] == b.history["train_loss"]
    assert a.history["val_loss"] == b.history["val_loss"]


def test_evaluate_uses_the_runs_count_unless_told_otherwise(tiny_npz, tmp_path, monkeypatch):
    from click.testing import CliRunner
    from cupyvae.cli import main
    folder = train_run(tmp_path / "run", tiny_npz, 1, 1)
    seen = record_threads(monkeypatch, {NumpyExecutor: ("loss_rows",)})
    assert runs.evaluate_run(folder, "cpu")["threads"] == 1
    result = CliRunner().invoke(main, ["evaluate", str(folder), "--device", "cpu", "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads((folder / runs.EVALUATION_FILE).read_text())["threads"] == 2
    if can_run_two_threads():
        assert seen == [[1], [2]]


def test_encode_uses_the_runs_count(tiny_npz, tmp_path, monkeypatch):
    if not can_run_two_threads():
        pytest.skip(f"NumPy's BLAS cannot be set to 2 threads here ({numpy_blas_threads()})")
    folder = train_run(tmp_path / "run", tiny_npz, 1, 2)
    seen = record_threads(monkeypatch, {NumpyExecutor: ("encode_raw",)})
    with threadpool_limits(limits=1, user_api="blas"):
        runs.encode_run(folder, tmp_path / "codes.npy", device="cpu")
    assert seen == [[2]]
