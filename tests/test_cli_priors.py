"""The command line with the learnable priors (`--prior mog`, `--prior vamp`), end to end on a
tiny .npz dataset: train, resume, evaluate with importance samples, sample, encode, plot and
explore, and the one-line errors for a bad K and for checkpoints that do not match their config.
"""
import json
import math
import shutil

import numpy as np
import pytest

import cupyvae
from cupyvae.checkpoint import read_checkpoint, save_checkpoint
from cupyvae.plots import PLOT_FILES
from test_cli import (TINY_MODEL, assert_ok, assert_one_line_error, assert_real_picture,
                      make_images, read_metrics, run_cli, save_npz)

K = 3
PRIOR_FLAGS = {"mog": ["--prior", "mog", "--prior-components", K],
               "vamp": ["--prior", "vamp", "--prior-components", K, "--prior-init", "data"]}
PRIOR_TENSORS = {"mog": {"prior.logits": (K,), "prior.components": (K, 4)},
                 "vamp": {"prior.pseudo_inputs": (K, 64)}}


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    x, y = make_images(200, np.random.default_rng(0))
    return save_npz(tmp_path_factory.mktemp("data") / "tiny.npz", x, y)


@pytest.fixture(scope="module", params=["mog", "vamp"])
def prior_run(request, tiny_npz, tmp_path_factory):
    """(prior name, a two-epoch run folder) shared by the read-only tests."""
    run_dir = tmp_path_factory.mktemp("runs") / request.param
    assert_ok(run_cli("train", "--data", tiny_npz, "--epochs", 2, *TINY_MODEL,
                      *PRIOR_FLAGS[request.param], "--out", run_dir))
    return request.param, run_dir


def copy_run(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "run")


def test_train_stores_the_prior_in_config_and_checkpoint(prior_run):
    prior, run_dir = prior_run
    model_section = json.loads((run_dir / "config.json").read_text())["model"]
    assert model_section["prior"] == prior and model_section["prior_components"] == K
    assert model_section["prior_init"] == ("data" if prior == "vamp" else "random")
    model = cupyvae.load(run_dir / "checkpoint.safetensors")
    shapes = {name: value.shape for name, value in model.params.items() if name.startswith("prior.")}
    assert shapes == PRIOR_TENSORS[prior]
    assert all(math.isfinite(float(row["val_loss"])) for row in read_metrics(run_dir))


def test_the_pictures_of_a_learned_prior(prior_run, tmp_path):
    """train wrote every picture (pseudo_inputs.png for vamp only); plot rewrites them."""
    prior, run_dir = prior_run
    expected = [f for name, f in PLOT_FILES.items() if prior == "vamp" or name != "pseudo_inputs"]
    for name in expected:
        assert_real_picture(run_dir / name)
    assert (run_dir / PLOT_FILES["pseudo_inputs"]).exists() == (prior == "vamp")
    copied = copy_run(run_dir, tmp_path)
    for name in expected:
        (copied / name).unlink()
    result = run_cli("plot", copied, "--device", "cpu")
    assert_ok(result)
    assert sorted(line.split("/")[-1] for line in result.stdout.splitlines()) == sorted(expected)


def test_evaluate_with_importance_samples(prior_run, tmp_path):
    _, run_dir = prior_run
    copied = copy_run(run_dir, tmp_path)
    assert_ok(run_cli("evaluate", copied, "--device", "cpu", "--iw-samples", 4, "--quiet"))
    evaluation = json.loads((copied / "evaluation.json").read_text())
    assert evaluation["iw_samples"] == 4 and math.isfinite(evaluation["log_likelihood"])
    assert evaluation["negative_elbo"] == pytest.approx(float(read_metrics(copied)[-1]["val_loss"]),
                                                        rel=1e-6)
    # log p(x) >= ELBO in expectation; with 4 samples on 40 examples the estimate is well above.
    assert evaluation["log_likelihood"] > -evaluation["negative_elbo"] - 1.0


def test_sample_encode_and_explore(prior_run, tmp_path):
    _, run_dir = prior_run
    assert_ok(run_cli("sample", run_dir, "-n", 6, "-o", tmp_path / "s.npy", "--device", "cpu"))
    drawn = np.load(tmp_path / "s.npy")
    assert drawn.shape == (6, 8, 8) and np.isfinite(drawn).all()
    assert_ok(run_cli("encode", run_dir, "-o", tmp_path / "codes.npy", "--device", "cpu", "-q"))
    assert np.load(tmp_path / "codes.npy").shape == (200, 2)
    assert_ok(run_cli("explore", run_dir, "--save", tmp_path / "explore.png", "--device", "cpu"))
    assert_real_picture(tmp_path / "explore.png")


def test_resume_continues_exactly_like_an_uninterrupted_run(prior_run, tiny_npz, tmp_path):
    prior, run_dir = prior_run
    resumed = copy_run(run_dir, tmp_path)
    assert_ok(run_cli("train", "--resume", "--out", resumed, "--epochs", 3, "-q"))
    straight = tmp_path / "straight"
    assert_ok(run_cli("train", "--data", tiny_npz, "--epochs", 3, *TINY_MODEL, *PRIOR_FLAGS[prior],
                      "--out", straight, "-q"))
    assert read_metrics(resumed)[:2] == read_metrics(run_dir)
    loss = lambda rows: [(row["train_loss"], row["val_loss"]) for row in rows]   # noqa: E731
    assert loss(read_metrics(resumed)) == loss(read_metrics(straight))
    params = [cupyvae.load(folder / "checkpoint.safetensors").flat_params for folder in (resumed, straight)]
    np.testing.assert_array_equal(*params)     # pseudo-inputs and mixture parameters included


def test_a_new_run_in_the_folder_removes_the_old_pseudo_inputs(tiny_npz, tmp_path):
    run_dir = tmp_path / "run"
    assert_ok(run_cli("train", "--data", tiny_npz, "--epochs", 1, *TINY_MODEL, *PRIOR_FLAGS["vamp"],
                      "--out", run_dir, "-q"))
    assert (run_dir / "pseudo_inputs.png").is_file()
    assert_ok(run_cli("train", "--data", tiny_npz, "--epochs", 1, *TINY_MODEL, "--out", run_dir,
                      "--force", "-q"))
    assert not (run_dir / "pseudo_inputs.png").exists()


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("flags, keywords", [
    (["--prior", "mog", "--prior-components", 0], ["--prior-components", "0"]),
    (["--prior", "vamp", "--prior-components", -2], ["--prior-components", "-2"]),
    # Cross-field errors name both flags.
    (["--prior", "normal", "--prior-components", 4],
     ["--prior-components 4: --prior normal has no components; leave --prior-components unset"]),
    (["--prior", "mog", "--prior-init", "data"], ["--prior-init data: not available for --prior mog"]),
])
def test_a_bad_number_of_components_is_a_one_line_error(tiny_npz, tmp_path, flags, keywords):
    result = run_cli("train", "--data", tiny_npz, "--epochs", 1, *TINY_MODEL, *flags,
                     "--out", tmp_path / "run")
    assert_one_line_error(result, *keywords)
    assert not (tmp_path / "run").exists()


def test_more_data_initialised_pseudo_inputs_than_examples_is_refused_before_writing(tiny_npz, tmp_path):
    """160 training examples (40 of the 200 are the test split); --limit 50 leaves 50."""
    run_dir = tmp_path / "run"
    result = run_cli("train", "--data", tiny_npz, "--epochs", 1, *TINY_MODEL, "--prior", "vamp",
                     "--prior-components", 51, "--prior-init", "data", "--limit", 50, "--out", run_dir)
    assert_one_line_error(result, "--prior-components 51:", "--prior vamp with --prior-init data",
                          "has 50")
    assert not run_dir.exists() or not any(run_dir.iterdir())     # nothing written: a rerun needs no --force
    assert_ok(run_cli("train", "--data", tiny_npz, "--epochs", 1, *TINY_MODEL, "--prior", "vamp",
                      "--prior-components", 50, "--prior-init", "data", "--limit", 50,
                      "--out", run_dir, "-q"))
    # Random initialisation reads no data: any K.
    assert_ok(run_cli("train", "--data", tiny_npz, "--epochs", 1, *TINY_MODEL, "--prior", "vamp",
                      "--prior-components", 51, "--limit", 50, "--out", tmp_path / "random", "-q"))


def test_a_checkpoint_whose_prior_tensors_do_not_match_its_config(prior_run, tmp_path):
    """The checkpoint's own config says K = 2, its tensors hold K = 3: every command refuses
    it in one line naming the tensor, its shape and the config's K."""
    prior, run_dir = prior_run
    copied = copy_run(run_dir, tmp_path)
    path = copied / "checkpoint.safetensors"
    tensors, meta = read_checkpoint(path)
    config = json.loads(meta["config"])
    config["prior_components"] = 2
    meta["config"] = json.dumps(config)
    save_checkpoint(path, tensors, meta)        # fresh digests: only the shapes disagree
    # mog's K = 2 and 3 fit the same aligned buffer, so the recorded layout tells (naming the
    # tensor); vamp's pseudo-inputs change the buffer's size, which is checked first.
    named = {"mog": ["'prior.components'", "[3, 4]", "prior_components 2", "needs [2, 4]"],
             "vamp": ["'params'", "prior='vamp'", "prior_components=2", "(2560,)"]}[prior]
    for command in (["evaluate", copied, "--device", "cpu"], ["plot", copied, "--device", "cpu"],
                    ["sample", copied, "-n", 2, "--device", "cpu"]):
        assert_one_line_error(run_cli(*command), "checkpoint.safetensors", *named)


def test_a_config_json_whose_prior_does_not_match_the_checkpoint(prior_run, tmp_path):
    _, run_dir = prior_run
    copied = copy_run(run_dir, tmp_path)
    config = json.loads((copied / "config.json").read_text())
    config["model"]["prior_components"] = 5
    (copied / "config.json").write_text(json.dumps(config))
    assert_one_line_error(run_cli("evaluate", copied, "--device", "cpu"),
                          "prior_components 5 in config.json, 3 in the checkpoint")
    config["model"]["prior_components"] = 0
    (copied / "config.json").write_text(json.dumps(config))
    assert_one_line_error(run_cli("evaluate", copied, "--device", "cpu"), "prior_components", "0")
