"""The `cupyvae` command line, run as a real subprocess on a tiny .npz dataset.

Every command is exercised end to end (train, resume, evaluate, sample, plot, explore),
and every bad input must end in a one-line "Error: ..." with no Python traceback.
"""
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

import cupyvae
from cupyvae.plots import PLOT_FILES
from cupyvae.threads import default_threads

# Tiny model and batches: a subprocess run takes about a second, most of it start-up.
TINY_MODEL = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "20", "--device", "cpu",
              "--seed", "3"]
SHAPE = (8, 8)
# The pictures of a run with the normal prior: all but the VampPrior's pseudo-inputs.
NORMAL_PRIOR_PLOTS = [file for name, file in PLOT_FILES.items() if name != "pseudo_inputs"]


def run_cli(*args, env_overrides=None, timeout=120) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items()
           if key not in ("DISPLAY", "WAYLAND_DISPLAY", "CUPYVAE_DEBUG")}
    env["MPLBACKEND"] = "Agg"
    env.update(env_overrides or {})
    return subprocess.run([sys.executable, "-m", "cupyvae.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def assert_one_line_error(result: subprocess.CompletedProcess, *keywords: str) -> str:
    """Non-zero exit, exactly one 'Error:' line naming the keywords, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for keyword in keywords:
        assert keyword in errors[0], errors[0]
    return errors[0]


def make_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n noisy 8x8 copies of four patterns (bar, column, diagonal, frame) and their labels."""
    patterns = np.zeros((4, *SHAPE), np.float32)
    patterns[0, 3:5, :] = 1
    patterns[1, :, 3:5] = 1
    patterns[2][np.eye(8, dtype=bool)] = 1
    patterns[3, [0, -1], :] = patterns[3, :, [0, -1]] = 1
    labels = rng.integers(0, 4, n)
    x = np.clip(patterns[labels] + rng.normal(0, 0.15, (n, *SHAPE)), 0, 1).astype(np.float32)
    return x, labels.astype(np.int64)


def save_npz(path: Path, x: np.ndarray, y: np.ndarray, n_test: int = 40) -> Path:
    np.savez(path, x_train=x[:-n_test], y_train=y[:-n_test], x_test=x[-n_test:], y_test=y[-n_test:])
    return path


def png_pixels(path: Path) -> np.ndarray:
    assert path.is_file(), f"{path} was not written"
    return mpimg.imread(path)


def assert_real_picture(path: Path, min_side: int = 200) -> None:
    image = png_pixels(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= min_side, image.shape
    assert image[..., :3].std() > 0.05, f"{path} is (nearly) one colour"


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    x, y = make_images(200, np.random.default_rng(0))
    return save_npz(tmp_path_factory.mktemp("data") / "tiny.npz", x, y)


@pytest.fixture(scope="module")
def trained_run(tiny_npz, tmp_path_factory) -> Path:
    """A two-epoch run folder shared by the read-only tests (tests that change a run copy it)."""
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    assert_ok(run_cli("train", "--data", tiny_npz, "--epochs", 2, *TINY_MODEL, "--out", run_dir))
    return run_dir


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


# ---------------------------------------------------------------------- train
def test_train_writes_config_with_every_option(trained_run, tiny_npz):
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"] == {"data_shape": list(SHAPE), "latent_dim": 2, "hidden": [16],
                               "activation": "relu", "posterior": "gaussian",
                               "likelihood": "bernoulli", "prior": "normal", "seed": 3,
                               "prior_components": None, "prior_init": "random", "init": "pytorch"}
    assert config["training"] == {"batch_size": 20, "lr": 1e-3, "weight_decay": 0.0,
                                  "binarize": False, "epochs": 2, "objective": "elbo",
                                  "iw_samples": 1, "free_bits": 0.0, "lr_schedule": "constant",
                                  "lr_warmup_steps": 0, "lr_decay_steps": 0, "lr_min": 0.0,
                                  "kl_weight": 1.0, "kl_warmup_steps": 0, "clip_norm": None,
                                  "val_fraction": 0.0, "patience": None,
                                  "threads": default_threads()}
    assert config["run"] == {"data": str(tiny_npz.resolve()), "limit": None, "device": "cpu",
                             "execution": "auto"}
    assert config["format"] == 2
    digests = {key: config["dataset"].pop(key) for key in ("train_sha256", "validation_sha256")}
    assert all(len(digest) == 64 for digest in digests.values()) and len(set(digests.values())) == 2
    assert config["dataset"] == {"name": "tiny.npz", "train_examples": 160,
                                 "validation": "test split", "validation_examples": 40}
    assert config["command"].startswith("cupyvae train --data ")
    assert "--epochs 2" in config["command"] and "--hidden 16" in config["command"]


def test_train_writes_metrics_checkpoint_and_plots(trained_run):
    rows = read_metrics(trained_run)
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    for row in rows:
        assert all(math.isfinite(float(row[key])) for key in ("train_loss", "val_loss", "seconds"))
    model = cupyvae.load(trained_run / "checkpoint.safetensors")
    assert model.config.hidden == (16,) and model.history["epoch"] == [1, 2]
    assert model.history["val_loss"] == pytest.approx([float(row["val_loss"]) for row in rows])
    for name in NORMAL_PRIOR_PLOTS:
        assert_real_picture(trained_run / name)
    assert not (trained_run / PLOT_FILES["pseudo_inputs"]).exists()


def test_train_prints_one_line_per_epoch(tiny_npz, tmp_path):
    result = run_cli("train", "--data", tiny_npz, "--epochs", 2, *TINY_MODEL, "--limit", 60,
                     "--out", tmp_path / "run")
    assert_ok(result)
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 2
    assert "train" in epoch_lines[0] and "val" in epoch_lines[0] and epoch_lines[0].endswith("s)")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["run"]["limit"] == 60 and config["dataset"]["train_examples"] == 60


def test_resume_continues_exactly_like_an_uninterrupted_run(trained_run, tiny_npz, tmp_path):
    resumed = copy_run(trained_run, tmp_path)
    assert_ok(run_cli("train", "--resume", "--out", resumed, "--epochs", 3, "--device", "cpu"))
    straight = tmp_path / "straight"
    assert_ok(run_cli("train", "--data", tiny_npz, "--epochs", 3, *TINY_MODEL, "--out", straight))

    rows = read_metrics(resumed)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert rows[:2] == read_metrics(trained_run)          # the first two epochs are kept as they were
    loss = lambda rows: [(row["train_loss"], row["val_loss"]) for row in rows]   # noqa: E731
    assert loss(rows) == loss(read_metrics(straight))     # and the third is the one it would have been
    assert json.loads((resumed / "config.json").read_text())["training"]["epochs"] == 3
    assert len(cupyvae.load(resumed / "checkpoint.safetensors").history["epoch"]) == 3


def test_resume_refuses_to_change_the_runs_options(trained_run, tmp_path):
    resumed = copy_run(trained_run, tmp_path)
    result = run_cli("train", "--resume", "--out", resumed, "--epochs", 3, "--lr", 0.01)
    assert_one_line_error(result, "--lr", "config.json")


def test_existing_run_folder_needs_force_which_keeps_foreign_files(trained_run, tiny_npz, tmp_path):
    run_dir = copy_run(trained_run, tmp_path)
    (run_dir / "notes.txt").write_text("mine")
    result = run_cli("train", "--data", tiny_npz, "--epochs", 1, *TINY_MODEL, "--out", run_dir)
    assert_one_line_error(result, str(run_dir), "--force")
    assert len(read_metrics(run_dir)) == 2                  # untouched

    assert_ok(run_cli("train", "--data", tiny_npz, "--epochs", 1, *TINY_MODEL, "--out", run_dir,
                      "--force"))
    assert len(read_metrics(run_dir)) == 1
    assert (run_dir / "notes.txt").read_text() == "mine"


def test_ctrl_c_keeps_the_last_complete_checkpoint(tiny_npz, tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "CUPYVAE_DEBUG")}
    process = subprocess.Popen(
        [sys.executable, "-m", "cupyvae.cli", "train", "--data", str(tiny_npz), "--epochs", "100000",
         *TINY_MODEL, "--out", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # A shell starts background jobs with SIGINT ignored, and an ignored signal stays
        # ignored across exec (Python then installs no KeyboardInterrupt handler): the
        # child must start with the default disposition, as under an interactive shell.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "metrics.csv").exists():    # at least one epoch is complete
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    saved = len(cupyvae.load(run_dir / "checkpoint.safetensors").history["epoch"])
    assert f"last complete checkpoint (epoch {saved})" in stderr
    assert "--resume" in stderr
    assert len(read_metrics(run_dir)) == saved


# ---------------------------------------------------------------------- other commands
def test_evaluate_writes_the_test_loss_of_the_checkpoint(trained_run, tiny_npz, tmp_path):
    run_dir = copy_run(trained_run, tmp_path)
    result = run_cli("evaluate", run_dir, "--device", "cpu", "--iw-samples", 3)
    assert_ok(result)
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    with np.load(tiny_npz) as data:
        x_test = data["x_test"]
    expected = cupyvae.load(run_dir / "checkpoint.safetensors").loss(x_test)
    assert math.isfinite(evaluation["negative_elbo"])
    assert evaluation["negative_elbo"] == pytest.approx(expected, rel=1e-6)
    assert evaluation["negative_elbo"] == pytest.approx(float(read_metrics(run_dir)[-1]["val_loss"]),
                                                        rel=1e-6)
    assert evaluation["examples"] == 40 and evaluation["iw_samples"] == 3
    assert math.isfinite(evaluation["log_likelihood"])
    assert "negative ELBO" in result.stdout and "log-likelihood" in result.stdout
    # bits per dimension: bernoulli is a mass function, so -log2 P / D with no correction.
    dim = x_test[0].size
    assert evaluation["negative_elbo_bits_per_dim"] == pytest.approx(
        evaluation["negative_elbo"] / (dim * math.log(2)), rel=1e-12)
    assert evaluation["log_likelihood_bits_per_dim"] == pytest.approx(
        -evaluation["log_likelihood"] / (dim * math.log(2)), rel=1e-12)
    assert "mass function" in evaluation["bits_per_dim_basis"] and "bits/dim" in result.stdout


def test_sample_writes_an_array_or_an_image_grid(trained_run, tmp_path):
    assert_ok(run_cli("sample", trained_run, "-n", 5, "-o", tmp_path / "s.npy", "--seed", 1,
                      "--device", "cpu"))
    drawn = np.load(tmp_path / "s.npy")
    assert drawn.shape == (5, *SHAPE) and drawn.dtype == np.float32
    assert 0 <= drawn.min() and drawn.max() <= 1
    assert_ok(run_cli("sample", trained_run, "-n", 9, "-o", tmp_path / "s.png", "--device", "cpu"))
    assert_real_picture(tmp_path / "s.png")


def test_plot_rewrites_every_plot(trained_run, tmp_path):
    run_dir = copy_run(trained_run, tmp_path)
    for name in NORMAL_PRIOR_PLOTS:
        (run_dir / name).unlink()
    assert_ok(run_cli("plot", run_dir, "--device", "cpu"))
    for name in NORMAL_PRIOR_PLOTS:
        assert_real_picture(run_dir / name)


def test_explore_save_renders_without_a_display(trained_run, tmp_path):
    assert_ok(run_cli("explore", trained_run, "--save", tmp_path / "explore.png", "--at", "1,-1",
                      "--device", "cpu"))
    assert_real_picture(tmp_path / "explore.png")


def test_explore_without_a_display_says_to_use_save(trained_run):
    assert_one_line_error(run_cli("explore", trained_run, "--device", "cpu"), "display", "--save")


# ---------------------------------------------------------------------- bad input
def test_unknown_dataset_is_a_one_line_error(tmp_path):
    result = run_cli("train", "--data", "no-such-data", *TINY_MODEL, "--out", tmp_path / "run")
    assert_one_line_error(result, "no-such-data", "fashion-mnist")
    assert not (tmp_path / "run").exists()


def test_nan_in_the_data_is_a_one_line_error(tmp_path):
    x, y = make_images(100, np.random.default_rng(1))
    x[7, 2, 3] = np.nan
    path = save_npz(tmp_path / "nan.npz", x, y)
    result = run_cli("train", "--data", path, *TINY_MODEL, "--out", tmp_path / "run")
    # the same wording as the API's (cupyvae.numbers.nonfinite_problem), first example named
    assert_one_line_error(result, "nan.npz", "1 NaN/inf values (first in example index 7, counting from 0)")
    assert not (tmp_path / "run").exists()


def test_data_outside_the_unit_interval_is_a_one_line_error(tmp_path):
    x, y = make_images(100, np.random.default_rng(2))
    path = save_npz(tmp_path / "wide.npz", 2 * x - 0.5, y)
    result = run_cli("train", "--data", path, *TINY_MODEL, "--likelihood", "bernoulli",
                     "--out", tmp_path / "run")
    assert_one_line_error(result, "[0, 1]", "bernoulli")
    assert not (tmp_path / "run").exists()


def test_a_value_just_above_one_is_shown_with_its_digits(tmp_path):
    x, y = make_images(100, np.random.default_rng(2))
    x = np.minimum(x, 0.9)
    x[5, 1, 1] = np.float32(1.0000001)      # ":g" printed this as 1: "values in [0, 1]"
    path = save_npz(tmp_path / "edge.npz", x, y)
    result = run_cli("train", "--data", path, *TINY_MODEL, "--out", tmp_path / "run")
    assert_one_line_error(result, "1.0000001", "first outside [0, 1] in example index 5")


def test_truncated_checkpoint_is_a_one_line_error(trained_run, tmp_path):
    run_dir = copy_run(trained_run, tmp_path)
    checkpoint = run_dir / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:500])
    assert_one_line_error(run_cli("evaluate", run_dir, "--device", "cpu"), "checkpoint.safetensors")


def test_folder_that_is_not_a_run_is_a_one_line_error(tmp_path):
    assert_one_line_error(run_cli("sample", tmp_path, "-o", tmp_path / "s.npy"), "config.json")


@pytest.mark.parametrize("command,output,named", [("sample", "s.jpg", ".npy or .png"),
                                                  ("encode", "codes.txt", ".npy or .csv")])
def test_an_output_file_type_is_refused_before_the_run_is_read(tmp_path, command, output, named):
    """The -o check of the run functions (runs.write_samples / encode_run), before any work:
    the folder is no run, yet the error is the file type."""
    assert_one_line_error(run_cli(command, tmp_path, "-o", tmp_path / output), output, named)


# ---------------------------------------------------------------------- objectives
def test_metrics_have_the_elbo_terms_and_active_units(trained_run):
    rows = read_metrics(trained_run)
    for row in rows:
        for key in ("train_recon", "train_kl", "val_recon", "val_kl"):
            assert math.isfinite(float(row[key])), (key, row)
        assert 0 <= int(row["active_units"]) <= 2
        assert float(row["val_recon"]) + float(row["val_kl"]) == pytest.approx(float(row["val_loss"]))


@pytest.mark.parametrize("flags, keywords", [
    (["--objective", "iwae", "--iw-samples", "5", "--free-bits", "0.5"], ["--free-bits 0.5", "IWAE"]),
    (["--free-bits", "nan"], ["--free-bits nan", "finite"]),
    (["--iw-samples", "0"], ["--iw-samples"]),
    # Options that combine badly name both flags.
    (["--iw-samples", "5"], ["--iw-samples 5: importance samples are for --objective iwae; "
                             "--objective elbo draws one sample", "leave --iw-samples at 1"]),
    (["--lr-min", "0.0001"], ["--lr-min 0.0001: applies to --lr-schedule cosine only"]),
])
def test_objective_options_that_make_no_sense_are_one_line_errors(tiny_npz, tmp_path, flags, keywords):
    result = run_cli("train", "--data", tiny_npz, *TINY_MODEL, *flags, "--out", tmp_path / "run")
    assert_one_line_error(result, *keywords)
    assert not (tmp_path / "run").exists()


def test_the_old_likelihood_name_gaussian_trains_as_gaussian_sigmoid(tiny_npz, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("train", "--data", tiny_npz, "--epochs", 1, *TINY_MODEL, "--likelihood",
                     "gaussian", "--out", run_dir)
    assert_ok(result)
    assert "--likelihood gaussian is now called gaussian-sigmoid" in result.stderr
    assert json.loads((run_dir / "config.json").read_text())["model"]["likelihood"] == "gaussian-sigmoid"
    quiet = run_cli("train", "--data", tiny_npz, "--epochs", 1, *TINY_MODEL, "--likelihood",
                    "gaussian", "--out", run_dir, "--force", "--quiet")      # --quiet after it
    assert_ok(quiet)
    assert quiet.stderr == ""


@pytest.mark.parametrize("flags, suggestion", [
    (["--likelihood", "gausian-real"], "did you mean 'gaussian-real'?"),
    (["--likelihood", "Laplace"], "did you mean 'laplace'?"),
    (["--prior", "vampp"], "did you mean 'vamp'?"),
])
def test_a_misspelled_name_gets_a_suggestion(tiny_npz, tmp_path, flags, suggestion):
    result = run_cli("train", "--data", tiny_npz, *TINY_MODEL, *flags, "--out", tmp_path / "run")
    assert_one_line_error(result, flags[1], suggestion, "available: ")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=suggestion.replace("?", r"\?")):
        cupyvae.VAE(SHAPE, **{flags[0][2:]: flags[1]})


def test_iwae_trains_from_the_cli(tiny_npz, tmp_path):
    run_dir = tmp_path / "run"
    assert_ok(run_cli("train", "--data", tiny_npz, "--epochs", 1, *TINY_MODEL, "--objective", "iwae",
                      "--iw-samples", 3, "--init", "pytorch", "--out", run_dir))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["training"]["objective"] == "iwae" and config["training"]["iw_samples"] == 3
    assert config["model"]["init"] == "pytorch"
    assert "--objective iwae" in config["command"] and "--iw-samples 3" in config["command"]
