"""One rule, one answer: the API and the CLI agree, and every error says how to go on.

Integer image data, the unknown-device message, near-miss dataset names, offline
downloads, where `sample` writes, the explorer's window and starting point, and what
`evaluate` says about a density's log-likelihood.
"""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cupyvae
from cupyvae import datasets, plots, runs
from cupyvae.arrays import as_float32_examples
from cupyvae.cli import main
from cupyvae.datasets import DatasetError, load_dataset
from cupyvae.training import TrainingOptions

from test_cli import TINY_MODEL, assert_ok, assert_one_line_error, make_images, run_cli, save_npz


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    x, y = make_images(100, np.random.default_rng(7))
    return save_npz(tmp_path_factory.mktemp("data") / "tiny.npz", x, y, n_test=20)


@pytest.fixture(scope="module")
def run_dir(tiny_npz, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs") / "run"
    assert_ok(run_cli("train", "--data", tiny_npz, "--epochs", 1, *TINY_MODEL, "--out", folder))
    return folder


# ---------------------------------------------------------------------- integer images
def test_uint8_is_divided_by_255_by_the_api_and_by_the_file_loaders_alike(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (30, 4, 5)).astype(np.uint8)
    path = tmp_path / "u8.npy"
    np.save(path, images)
    from_file = load_dataset(str(path))
    from_api = cupyvae.VAE((4, 5), hidden=(8,), device="cpu").validate_data(images)
    expected = images.astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(from_api, expected.reshape(30, -1))
    np.testing.assert_array_equal(np.concatenate([from_file.x_train, from_file.x_test]), expected)
    # and so fit on uint8 trains exactly as fit on the scaled floats
    a = cupyvae.VAE((4, 5), hidden=(8,), device="cpu")
    b = cupyvae.VAE((4, 5), hidden=(8,), device="cpu")
    assert a.fit(images, epochs=1, batch_size=10)["train_loss"] == \
        b.fit(expected, epochs=1, batch_size=10)["train_loss"]
    np.testing.assert_array_equal(a.flat_params, b.flat_params)


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.int8])
def test_other_integer_types_are_refused_by_both_with_the_same_rule(dtype, tmp_path):
    images = np.ones((12, 2, 2), dtype)
    path = tmp_path / "ints.npy"
    np.save(path, images)
    with pytest.raises(DatasetError, match=rf"ints.npy: array has dtype {np.dtype(dtype)}: use "):
        load_dataset(str(path))
    with pytest.raises(ValueError, match=rf"x_train has dtype {np.dtype(dtype)}: use "):
        cupyvae.VAE((2, 2), device="cpu").fit(images, epochs=1, batch_size=4)
    assert as_float32_examples(np.array([True, False])).tolist() == [1.0, 0.0]


# ---------------------------------------------------------------------- names
def test_the_unknown_device_error_lists_auto(run_dir):
    with pytest.raises(ValueError, match=r"unknown device 'tpu'; available: auto, cpu, "):
        cupyvae.load(run_dir / runs.CHECKPOINT_FILE, device="tpu")
    with pytest.raises(ValueError, match=r"device = 'tpu': must be one of auto, cpu"):
        runs.RunOptions(device="tpu")
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--device", "tpu"])
    assert result.exit_code != 0 and "'auto'" in result.output and "'cpu'" in result.output


@pytest.mark.parametrize("typed", ["Fashion-MNIST", "fashion_mnist", "FASHION_MNIST", "fashionmnist"])
def test_a_misspelled_dataset_name_gets_a_suggestion(typed, tmp_path):
    with pytest.raises(DatasetError, match=r"did you mean 'fashion-mnist'\?"):
        load_dataset(typed)
    error = assert_one_line_error(run_cli("train", "--data", typed, "--out", tmp_path / "r"))
    assert "did you mean 'fashion-mnist'?" in error
    assert not (tmp_path / "r").exists()


def test_an_unrelated_name_gets_no_suggestion():
    with pytest.raises(DatasetError) as error:
        load_dataset("imagenet")
    assert "did you mean" not in str(error.value)


def test_an_offline_download_failure_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CUPYVAE_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "MNIST_MIRRORS", ["http://127.0.0.1:9/"])   # nothing listens
    with pytest.raises(DatasetError) as error:
        load_dataset("mnist")
    message = str(error.value)
    assert f"copy it to {tmp_path / 'cache' / 'mnist' / datasets.IDX_TRAIN_IMAGES}" in message
    assert "CUPYVAE_DATA" in message and "Without internet access" in message


# ---------------------------------------------------------------------- run folder commands
def test_sample_writes_into_the_run_folder_by_default(run_dir):
    result = run_cli("sample", run_dir, "-n", 9, "--device", "cpu")
    assert_ok(result)
    assert (run_dir / "samples-9.png").is_file()
    assert str(run_dir / "samples-9.png") in result.stdout


def test_the_explorer_window_is_titled_and_starts_at_the_mean_code(run_dir, monkeypatch):
    opened = {}
    monkeypatch.setattr("cupyvae.cli._require_display", lambda: None)
    monkeypatch.setattr(plots, "explore", lambda model, **kwargs: opened.update(kwargs, model=model))
    result = CliRunner().invoke(main, ["explore", str(run_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    config, model = runs.load_run(run_dir, "cpu")
    codes = runs.data_codes(config, model)
    np.testing.assert_allclose(opened["z"], codes.mean(axis=0), rtol=1e-6)
    assert opened["title"] == f"cupyvae explore {run_dir}"
    assert opened["start"] == "the data's mean code"
    ranges = opened["ranges"]
    lo, hi = np.quantile(codes, [0.005, 0.995], axis=0)
    assert (ranges[:, 0] <= np.minimum(lo, -plots.SLIDER_RANGE)).all()
    assert (ranges[:, 1] >= np.maximum(hi, plots.SLIDER_RANGE)).all()
    figure, sliders = plots.explorer_figure(model, z=opened["z"], ranges=ranges, start=opened["start"])
    assert [s.val for s in sliders] == pytest.approx(opened["z"].tolist())
    assert "starting at the data's mean code" in figure._suptitle.get_text()


def test_slider_ranges_reach_codes_far_from_the_prior():
    codes = np.stack([np.linspace(-12, 18, 200), np.linspace(-1, 1, 200)], axis=1)
    ranges = plots.slider_ranges(codes, z=np.array([0.0, 5.5]))
    assert ranges[0, 0] <= -11.8 and ranges[0, 1] >= 17.8          # the codes' span
    assert ranges[1].tolist() == [-3.0, 6.0]                        # at least +-3, and z


# ---------------------------------------------------------------------- evaluate
def test_evaluate_explains_a_densitys_log_likelihood_and_only_for_a_density(tiny_npz, tmp_path,
                                                                            run_dir):
    gaussian = tmp_path / "g"
    assert_ok(run_cli("train", "--data", tiny_npz, "--epochs", 1, *TINY_MODEL,
                      "--likelihood", "gaussian-sigmoid", "--out", gaussian))
    result = run_cli("evaluate", gaussian, "--iw-samples", 2, "--device", "cpu")
    assert_ok(result)
    assert "note: the gaussian-sigmoid likelihood is a density" in result.stdout
    assert "[0, 1]^64" in result.stdout and "can be positive" in result.stdout
    assert "density" in json.loads((gaussian / runs.EVALUATION_FILE).read_text())["note"]
    # bernoulli on grey levels (tiny.npz): not a density, and not a log-probability either.
    bernoulli = run_cli("evaluate", run_dir, "--device", "cpu")
    assert_ok(bernoulli)
    assert "density" not in bernoulli.stdout
    assert "note: " in bernoulli.stdout and "is a cross-entropy there" in bernoulli.stdout


def test_resume_command_in_the_interrupted_message_is_the_working_form(run_dir, tmp_path):
    import shutil
    copy = Path(shutil.copytree(run_dir, tmp_path / "copy"))
    config = runs.read_config(copy)
    config = dataclasses.replace(config, training=config.training.replace(epochs=3))
    run = runs.Run(copy, config, cupyvae.load(copy / runs.CHECKPOINT_FILE), None, None, None)
    message = run._interrupted_message()
    command = message.split("Continue with: ")[1]
    assert command.startswith(f"cupyvae train --resume --out {copy} --epochs ")
    words = command.split()[1:]
    words[-1] = "2"
    assert_ok(run_cli(*words, "--device", "cpu"))
    assert TrainingOptions.from_dict(json.loads((copy / runs.CONFIG_FILE).read_text())["training"]).epochs == 2
