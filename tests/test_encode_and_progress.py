"""`cupyvae encode`, progress on every long pass (and --quiet), and the device notice.

The commands run as real subprocesses on a tiny labelled .npz, as in test_cli.py.
"""
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cupyvae
from cupyvae import runs
from cupyvae.progress import ConsoleReporter, Reporter, reporter_for_level

from test_cli import TINY_MODEL, assert_ok, assert_one_line_error, make_images, run_cli, save_npz


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    x, y = make_images(150, np.random.default_rng(5))
    return save_npz(tmp_path_factory.mktemp("data") / "tiny.npz", x, y, n_test=30)


@pytest.fixture(scope="module")
def run_dir(tiny_npz, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs") / "run"
    assert_ok(run_cli("train", "--data", tiny_npz, "--epochs", 1, *TINY_MODEL, "--out", folder))
    return folder


def expected_codes(run_dir: Path, x: np.ndarray, sample: bool = False) -> np.ndarray:
    return cupyvae.load(run_dir / runs.CHECKPOINT_FILE).encode(x, sample=sample)


def all_rows(npz: Path):
    with np.load(npz) as data:
        return (np.concatenate([data["x_train"], data["x_test"]]),
                np.concatenate([data["y_train"], data["y_test"]]))


# ---------------------------------------------------------------------- encode
def test_encode_npy_writes_codes_and_labels_beside_them(run_dir, tiny_npz, tmp_path):
    result = run_cli("encode", run_dir, "-o", tmp_path / "codes.npy", "--device", "cpu")
    assert_ok(result)
    x, y = all_rows(tiny_npz)
    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (150, 2) and codes.dtype == np.float32
    np.testing.assert_array_equal(codes, expected_codes(run_dir, x))
    np.testing.assert_array_equal(np.load(tmp_path / "codes.labels.npy"), y)
    assert "150 posterior means (2-D) with labels" in result.stdout


def test_encode_csv_has_a_header_codes_and_labels(run_dir, tiny_npz, tmp_path):
    assert_ok(run_cli("encode", run_dir, "-o", tmp_path / "codes.csv", "--split", "test",
                      "--device", "cpu"))
    with open(tmp_path / "codes.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["z1", "z2", "label"]
    with np.load(tiny_npz) as data:
        x_test, y_test = data["x_test"], data["y_test"]
    values = np.array([[float(v) for v in row[:2]] for row in rows[1:]], np.float32)
    np.testing.assert_array_equal(values, expected_codes(run_dir, x_test))   # %.9g round-trips float32
    assert [int(row[2]) for row in rows[1:]] == y_test.tolist()


def test_encode_without_labels_writes_codes_only(run_dir, tmp_path):
    x, _ = make_images(25, np.random.default_rng(9))
    unlabelled = tmp_path / "plain.npy"
    np.save(unlabelled, x)
    assert_ok(run_cli("encode", run_dir, "--data", unlabelled, "-o", tmp_path / "c.npy",
                      "--device", "cpu"))
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), expected_codes(run_dir, x))
    assert not (tmp_path / "c.labels.npy").exists()
    assert_ok(run_cli("encode", run_dir, "--data", unlabelled, "-o", tmp_path / "c.csv",
                      "--device", "cpu"))
    header = (tmp_path / "c.csv").read_text().splitlines()[0]
    assert header == "z1,z2"
    assert len((tmp_path / "c.csv").read_text().splitlines()) == 26


def test_encode_sample_draws_from_the_posterior(run_dir, tiny_npz, tmp_path):
    assert_ok(run_cli("encode", run_dir, "-o", tmp_path / "s.npy", "--sample", "--device", "cpu"))
    x, _ = all_rows(tiny_npz)
    drawn = np.load(tmp_path / "s.npy")
    np.testing.assert_array_equal(drawn, expected_codes(run_dir, x, sample=True))
    assert not np.allclose(drawn, expected_codes(run_dir, x))


def test_encode_refuses_other_file_types_and_shapes(run_dir, tmp_path):
    assert_one_line_error(run_cli("encode", run_dir, "-o", tmp_path / "codes.txt"), ".npy or .csv")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((5, 3, 3), np.float32))
    assert_one_line_error(run_cli("encode", run_dir, "--data", wrong, "-o", tmp_path / "c.npy",
                                  "--device", "cpu"), "shape")
    assert not (tmp_path / "c.npy").exists()


def test_encode_run_encodes_in_batches_with_progress(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cupyvae.model, "EVAL_CHUNK", 40)
    done = []

    class Count(Reporter):
        def task(self, label, total):
            import contextlib

            @contextlib.contextmanager
            def counting():
                done.append((label, total))
                yield lambda n: done.append(n)
            return counting()
    summary = runs.encode_run(run_dir, tmp_path / "c.npy", device="cpu", reporter=Count())
    assert summary["examples"] == 150
    assert done[0] == ("encoding 150 examples (posterior means)", 150)
    assert done[1:] == [40, 40, 40, 30]        # one call per batch of EVAL_CHUNK


# ---------------------------------------------------------------------- progress
@pytest.mark.parametrize("command,labels", [
    (["train", "--epochs", "2"], ["epoch 1/2", "epoch 2/2", "validation (30 examples)"]),
    (["evaluate", "--iw-samples", "2"], ["negative ELBO (30 test examples)",
                                         "importance sampling, K=2 (30 test examples)"]),
    (["encode", "-o", "{tmp}/c.npy"], ["encoding 150 examples"]),
    (["plot"], ["drawing 5 pictures"]),
    (["explore", "--save", "{tmp}/e.png"], ["encoding 30 examples"]),   # the test split's codes
    (["sample", "-o", "{tmp}/s.png"], []),                              # nothing long: --quiet is accepted
])
def test_progress_is_on_stderr_and_quiet_turns_it_off(command, labels, run_dir, tiny_npz, tmp_path):
    def invoke(*extra):
        words = [w.replace("{tmp}", str(tmp_path)) for w in command]
        if words[0] == "train":
            out = tmp_path / f"run{len(extra)}"
            return run_cli(*words, "--data", tiny_npz, *TINY_MODEL, "--out", out, *extra)
        return run_cli(words[0], run_dir, *words[1:], "--device", "cpu", *extra)

    loud = invoke()
    assert_ok(loud)
    for label in labels:
        assert label in loud.stderr, loud.stderr
        assert label not in loud.stdout
    quiet = invoke("--quiet")
    assert_ok(quiet)
    assert quiet.stderr == "", quiet.stderr
    assert quiet.stdout.strip()                   # the results are still printed


def test_the_api_reports_progress_by_callback_and_verbose_level(capsys):
    x, _ = make_images(60, np.random.default_rng(1))
    model = cupyvae.VAE((8, 8), latent_dim=2, hidden=(8,), device="cpu")
    batches, examples = [], []
    model.fit(x[:40], x[40:], epochs=2, batch_size=10, progress=batches.append)
    assert batches == [1] * 8
    model.log_likelihood(x[:10], n_samples=2, progress=examples.append)
    assert examples == [10]
    examples.clear()
    model.encode(x, progress=examples.append)
    model.loss(x, progress=examples.append)
    assert examples == [60, 60]
    capsys.readouterr()
    model.fit(x[:40], x[40:], epochs=1, batch_size=10, verbose=1)
    err = capsys.readouterr().err
    assert err.startswith("epoch   3  train") and err.count("\n") == 1
    model.fit(x[:40], x[40:], epochs=1, batch_size=10, verbose=2)
    err = capsys.readouterr().err
    assert "epoch 4/4" in err and "validation (20 examples)" in err and "epoch   4  train" in err
    with pytest.raises(ValueError, match="verbose must be 0, 1 or 2"):
        reporter_for_level(3)


def test_log_likelihood_reports_every_batch_of_examples(monkeypatch):
    from cupyvae.executors import NumpyExecutor
    monkeypatch.setattr(NumpyExecutor, "importance_rows", 100)   # 50 examples x 2 samples a call
    x, _ = make_images(230, np.random.default_rng(2))
    model = cupyvae.VAE((8, 8), latent_dim=2, hidden=(8,), device="cpu")
    calls = []
    model.log_likelihood(x, n_samples=2, progress=calls.append)
    assert calls == [50, 50, 50, 50, 30]


def test_console_reporter_without_bars_prints_only_epoch_lines():
    out = io.StringIO()
    reporter = ConsoleReporter(bars=False, messages=False, epoch_stream=out)
    reporter.epoch_started(1, 2, 10)
    reporter.batches_done(3)
    with reporter.task("validation", 5) as advance:
        advance(5)
    reporter.epoch_finished({"epoch": 1, "train_loss": 2.0, "val_loss": None, "seconds": 0.1})
    assert out.getvalue() == "epoch   1  train 2.000  (0.1 s)\n"


# ---------------------------------------------------------------------- the device notice
NOTICE = "no usable CUDA GPU"


def test_the_gpu_notice_is_shown_once_and_only_where_a_device_is_chosen(run_dir, tiny_npz, tmp_path):
    from cupyvae.executors import cuda_available
    if cuda_available():
        pytest.skip("a GPU is visible: there is no notice to show")
    train = run_cli("train", "--data", tiny_npz, "--epochs", 1, *TINY_MODEL[:-4], "--device", "auto",
                    "--out", tmp_path / "r")
    assert_ok(train)
    assert train.stderr.count(NOTICE) == 1, train.stderr
    for words in (["evaluate", run_dir], ["encode", run_dir, "-o", tmp_path / "c.npy"]):
        result = run_cli(*words, "--device", "auto")
        assert_ok(result)
        assert result.stderr.count(NOTICE) == 1, (words, result.stderr)
        assert "Warning" not in result.stderr                   # one plain line, not a warning dump
        quiet = run_cli(*words, "--device", "auto", "--quiet")
        assert NOTICE not in quiet.stderr
    for words in (["plot", run_dir], ["sample", run_dir, "-o", tmp_path / "s.png"],
                  ["explore", run_dir, "--save", tmp_path / "e.png"]):
        result = run_cli(*words, "--device", "auto")
        assert_ok(result)
        assert NOTICE not in result.stderr, (words, result.stderr)


def test_the_api_shows_the_notice_once_per_process(tmp_path):
    script = ("import cupyvae\n"
              "for _ in range(3):\n"
              "    cupyvae.VAE((2, 2), device='auto')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    from cupyvae.executors import cuda_available
    assert result.stderr.count(NOTICE) == (0 if cuda_available() else 1), result.stderr


def test_a_sample_picture_is_titled_like_samples_png_with_the_prior_caveat(run_dir, tmp_path,
                                                                          monkeypatch):
    """`cupyvae sample -o x.png` warns, as samples.png does, when the data's codes are not
    distributed like the prior (then samples look unlike the data)."""
    from types import SimpleNamespace
    from cupyvae import plots
    titles = []
    monkeypatch.setattr(plots, "data_view", lambda model, data: SimpleNamespace(
        matches_prior=False, prior_ks=0.5))
    monkeypatch.setattr(plots, "image_grid", lambda drawn, path, data_shape, title: titles.append(title))
    runs.write_samples(run_dir, 4, tmp_path / "s.png", device="cpu")
    assert titles == [plots.samples_title(4, SimpleNamespace(matches_prior=False, prior_ks=0.5))]
    assert titles[0].startswith("4 samples from the prior") and "(KS 0.50 > 0.1)" in titles[0]
