"""Validation split (val_fraction) and early stopping (patience), in `fit` and in a run folder.

Early stopping is driven here by scripted validation losses (VAE._validation_loss patched
to replay a list), so the epoch at which training must stop is known exactly.
"""
import json
from pathlib import Path

import numpy as np
import pytest

import cupyvae
from cupyvae import runs
from cupyvae.model import VAE, best_checkpoint_path
from cupyvae.options import OptionError
from cupyvae.training import (TrainingOptions, best_epoch, data_digest, split_digest,
                              split_validation, stopped_early)

SHAPE = (4, 5)


def toy_data(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, *SHAPE)) < 0.3).astype(np.float32)


def small_model(**kwargs) -> VAE:
    return VAE(SHAPE, latent_dim=2, hidden=(8,), device="cpu", seed=kwargs.pop("seed", 1), **kwargs)


@pytest.fixture
def scripted_val_loss(monkeypatch):
    """Make every validation pass return the next value of a script (per model instance
    order does not matter: one global script)."""
    script = []

    def replay(self, x_val, reporter):
        assert len(x_val) > 0
        return {"negative_elbo": script.pop(0), "reconstruction": None, "kl": None,
                "active_units": None}
    monkeypatch.setattr(VAE, "_validation_terms", replay)
    return script


# ---------------------------------------------------------------------- the split
def test_split_is_seeded_disjoint_complete_and_sized():
    train, val = split_validation(103, 0.1, seed=7)
    assert len(val) == 10 and len(train) == 93
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(103))
    again_train, again_val = split_validation(103, 0.1, seed=7)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert not np.array_equal(val, split_validation(103, 0.1, seed=8)[1])
    assert not np.array_equal(val, np.arange(93, 103))       # random rows, not the last tenth
    assert len(split_validation(5, 0.01, seed=0)[1]) == 1      # at least one example
    assert split_digest(val) != split_digest(split_validation(103, 0.1, seed=8)[1])


def test_split_that_leaves_nothing_to_train_on_is_refused():
    with pytest.raises(ValueError, match="leaves no example"):
        split_validation(1, 0.5, seed=0)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), "0.1", True])
def test_val_fraction_must_be_in_zero_one(value):
    with pytest.raises(ValueError, match="val_fraction"):
        TrainingOptions(val_fraction=value)


@pytest.mark.parametrize("value", [0, -1, 2.0, "3"])
def test_patience_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="patience"):
        TrainingOptions(patience=value)


def test_fit_validates_on_the_split_rows(monkeypatch):
    x = toy_data(50)
    model = small_model()
    seen = []
    original = VAE.loss
    monkeypatch.setattr(VAE, "loss", lambda self, xv, progress=None: seen.append(xv.copy()) or original(self, xv))
    model.fit(x, epochs=1, batch_size=10, val_fraction=0.2)
    _, val_rows = split_validation(50, 0.2, model.config.seed)
    np.testing.assert_array_equal(seen[0], x[val_rows].reshape(10, -1))
    assert model.history["val_loss"][0] is not None


def test_fit_refuses_x_val_and_val_fraction_together():
    x = toy_data(30)
    with pytest.raises(ValueError, match="x_val or val_fraction"):
        small_model().fit(x, x, epochs=1, batch_size=10, val_fraction=0.2)


# ---------------------------------------------------------------------- early stopping in fit
def test_fit_stops_early_and_keeps_the_best_epoch_beside_the_last(tmp_path, scripted_val_loss):
    scripted_val_loss.extend([5.0, 4.0, 4.5, 4.2, 3.0])
    model = small_model()
    path = tmp_path / "m.safetensors"
    history = model.fit(toy_data(40), toy_data(10, 1), epochs=10, batch_size=10, patience=2,
                        checkpoint=path)
    assert history["epoch"] == [1, 2, 3, 4]        # epochs 3 and 4 did not improve on epoch 2
    assert best_epoch(model.history) == (2, 4.0) and stopped_early(model.history, 2)
    best = cupyvae.load(best_checkpoint_path(path))
    last = cupyvae.load(path)
    assert best.history["epoch"] == [1, 2] and last.history["epoch"] == [1, 2, 3, 4]
    assert not np.array_equal(best.flat_params, last.flat_params)
    assert best_checkpoint_path(path) == tmp_path / "m.best.safetensors"


def test_fit_again_after_early_stopping_trains_nothing_unless_patience_grows(scripted_val_loss):
    scripted_val_loss.extend([5.0, 6.0, 7.0, 3.0])
    model = small_model()
    x, x_val = toy_data(40), toy_data(10, 1)
    assert model.fit(x, x_val, epochs=5, batch_size=10, patience=2)["epoch"] == [1, 2, 3]
    assert model.fit(x, x_val, epochs=5, batch_size=10, patience=2)["epoch"] == []
    assert model.fit(x, x_val, epochs=1, batch_size=10, patience=3)["epoch"] == [4]


def test_patience_needs_validation_data():
    with pytest.raises(ValueError, match="patience.*validation"):
        small_model().fit(toy_data(30), epochs=2, batch_size=10, patience=1)


def test_fit_returns_a_copy_of_this_calls_history():
    model = small_model()
    x = toy_data(30)
    first = model.fit(x, epochs=2, batch_size=10)
    second = model.fit(x, epochs=1, batch_size=10)
    assert first["epoch"] == [1, 2] and second["epoch"] == [3]
    second["epoch"].append(99)
    first["train_loss"].clear()
    assert model.history["epoch"] == [1, 2, 3] and len(model.history["train_loss"]) == 3


# ---------------------------------------------------------------------- in a run folder
@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    x = toy_data(80, 3)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=x[:70], x_test=x[70:])
    return path


def start(tmp_path, tiny_npz, **training) -> runs.Run:
    return runs.start_run(tmp_path / "run", {"hidden": (8,), "latent_dim": 2, "seed": 2},
                          TrainingOptions(batch_size=10, **training),
                          runs.RunOptions(data=str(tiny_npz), device="cpu"))


def model_rows(run: runs.Run) -> np.ndarray:
    return run.model.validate_data(run.dataset.x_train)


def test_run_records_the_split_and_resume_checks_it(tmp_path, tiny_npz):
    run = start(tmp_path, tiny_npz, epochs=1, val_fraction=0.25)
    run.train(runs.Reporter())
    dataset = json.loads((run.folder / runs.CONFIG_FILE).read_text())["dataset"]
    _, val_rows = split_validation(70, 0.25, 2)
    assert dataset == {"name": "tiny.npz", "train_examples": 52, "validation": "0.25 of the train split",
                       "validation_examples": 18, "split_seed": 2,
                       "validation_rows_sha256": split_digest(val_rows),
                       "train_sha256": data_digest(model_rows(run))}
    assert runs.resume_run(run.folder, {"epochs": 2}) is not None
    x = toy_data(90, 4)                      # the data change under the run: another split
    np.savez(tiny_npz, x_train=x[:80], x_test=x[80:])
    with pytest.raises(runs.RunError, match="changed since the run started"):
        runs.resume_run(run.folder, {"epochs": 2})


def test_run_stops_early_keeps_both_checkpoints_and_resume_knows(tmp_path, tiny_npz,
                                                                   scripted_val_loss):
    scripted_val_loss.extend([5.0, 4.0, 4.5, 4.6])
    run = start(tmp_path, tiny_npz, epochs=8, patience=2)
    messages = []

    class Collect(runs.Reporter):
        def message(self, text):
            messages.append(text)
    run.train(Collect())
    assert scripted_val_loss == []              # exactly four validation passes
    folder = run.folder
    assert cupyvae.load(folder / runs.CHECKPOINT_FILE).history["epoch"] == [1, 2, 3, 4]
    assert cupyvae.load(folder / runs.BEST_CHECKPOINT_FILE).history["epoch"] == [1, 2]
    assert any("stopped early at epoch 4" in m and "since epoch 2" in m for m in messages), messages
    # The plots show the best epoch's model; evaluate/encode use it unless told otherwise.
    assert runs.load_run(folder, "cpu", checkpoint="best")[1].history["epoch"] == [1, 2]
    assert runs.load_run(folder, "cpu", checkpoint="last")[1].history["epoch"] == [1, 2, 3, 4]

    # Resuming with the same patience: nothing to train, and the message says why.
    assert runs.resume_run(folder, {"epochs": 8}) is None
    assert "stopped early at epoch 4" in runs.finished_message(folder, {"epochs": 8})
    # A larger patience continues from the last checkpoint (patience may change on resume).
    resumed = runs.resume_run(folder, {"epochs": 8, "patience": 4})
    assert resumed is not None and resumed.config.training.patience == 4
    scripted_val_loss.extend([3.0, 3.5, 3.6, 3.7])
    resumed.train(runs.Reporter())
    history = cupyvae.load(folder / runs.CHECKPOINT_FILE).history
    assert history["epoch"] == [1, 2, 3, 4, 5, 6, 7, 8]       # epoch 5 improved; 8 is the target
    assert cupyvae.load(folder / runs.BEST_CHECKPOINT_FILE).history["epoch"] == [1, 2, 3, 4, 5]


def test_resume_after_early_stopping_matches_an_uninterrupted_run(tmp_path, tiny_npz):
    """Interrupt (train 3 epochs), resume to 12 with patience 1: the same epochs and losses
    as one uninterrupted run, including where early stopping ends it."""
    straight = runs.start_run(tmp_path / "straight", {"hidden": (8,), "latent_dim": 2, "seed": 2},
                              TrainingOptions(batch_size=10, epochs=12, patience=1, lr=0.05),
                              runs.RunOptions(data=str(tiny_npz), device="cpu"))
    straight.train(runs.Reporter())
    split = runs.start_run(tmp_path / "split", {"hidden": (8,), "latent_dim": 2, "seed": 2},
                           TrainingOptions(batch_size=10, epochs=3, patience=1, lr=0.05),
                           runs.RunOptions(data=str(tiny_npz), device="cpu"))
    split.train(runs.Reporter())
    while (run := runs.resume_run(split.folder, {"epochs": 12})) is not None:
        run.train(runs.Reporter())
    a = cupyvae.load(straight.folder / runs.CHECKPOINT_FILE).history
    b = cupyvae.load(split.folder / runs.CHECKPOINT_FILE).history
    assert (a["epoch"], a["train_loss"], a["val_loss"]) == (b["epoch"], b["train_loss"], b["val_loss"])
    assert len(a["epoch"]) < 12, "lr 0.05 on 70 examples was chosen to overfit and stop early"


def test_patience_without_any_validation_set_is_refused_before_writing(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, toy_data(8))                 # < 10 rows: no test split
    with pytest.raises(OptionError, match="patience = 2: early stopping needs a validation set.*"
                                          "set val_fraction"):
        runs.start_run(tmp_path / "run", {"hidden": (8,)}, TrainingOptions(batch_size=2, patience=2),
                       runs.RunOptions(data=str(path), device="cpu"))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- the best checkpoint
def test_patience_added_on_resume_keeps_the_last_epoch_when_it_is_the_best(tmp_path, tiny_npz,
                                                                           scripted_val_loss):
    scripted_val_loss.extend([5.0, 4.0, 3.0])          # trained without patience: best = last
    start(tmp_path, tiny_npz, epochs=3).train(runs.Reporter())
    folder = tmp_path / "run"
    assert not (folder / runs.BEST_CHECKPOINT_FILE).exists()
    scripted_val_loss.extend([3.5, 3.6])
    messages = []

    class Collect(runs.Reporter):
        def message(self, text):
            messages.append(text)
    runs.resume_run(folder, {"epochs": 10, "patience": 2}).train(Collect())
    assert cupyvae.load(folder / runs.BEST_CHECKPOINT_FILE).history["epoch"] == [1, 2, 3]
    assert runs.checkpoint_path(folder, "best").name == runs.BEST_CHECKPOINT_FILE
    assert any("stopped early at epoch 5" in m and runs.BEST_CHECKPOINT_FILE in m for m in messages)


def test_patience_added_on_resume_is_refused_when_the_best_model_was_not_kept(
        tmp_path, tiny_npz, scripted_val_loss):
    scripted_val_loss.extend([5.0, 3.0, 4.0])          # best epoch 2, never written
    start(tmp_path, tiny_npz, epochs=3).train(runs.Reporter())
    with pytest.raises(runs.RunError, match=r"--patience: the best epoch so far is epoch 2 .*"
                                            r"does not exist"):
        runs.resume_run(tmp_path / "run", {"epochs": 10, "patience": 2})
    with pytest.raises(ValueError, match="patience: the best epoch so far is epoch 2"):
        cupyvae.load(tmp_path / "run" / runs.CHECKPOINT_FILE).fit(
            toy_data(20), toy_data(10, 1), epochs=1, batch_size=10, patience=2,
            checkpoint=tmp_path / "api.safetensors")


def test_a_best_checkpoint_lost_to_a_kill_is_rewritten_on_resume(tmp_path, tiny_npz,
                                                                 scripted_val_loss):
    scripted_val_loss.extend([5.0, 4.0])
    start(tmp_path, tiny_npz, epochs=2, patience=2).train(runs.Reporter())
    folder = tmp_path / "run"
    # Killed between writing the last checkpoint (epoch 2, the best) and the best one:
    assert cupyvae.load(folder / runs.CHECKPOINT_FILE).history["epoch"] == [1, 2]
    last = cupyvae.load(folder / runs.CHECKPOINT_FILE)
    last.history = {k: v[:1] for k, v in last.history.items()}
    last.save(folder / runs.BEST_CHECKPOINT_FILE)       # one epoch stale
    with pytest.raises(runs.RunError, match=r"holds epoch 1, but the best validation loss .* "
                                            r"is at epoch 2"):
        runs.load_run(folder, "cpu", checkpoint="best")
    scripted_val_loss.extend([4.5])
    runs.resume_run(folder, {"epochs": 3}).train(runs.Reporter())
    assert cupyvae.load(folder / runs.BEST_CHECKPOINT_FILE).history["epoch"] == [1, 2]
    assert runs.load_run(folder, "cpu", checkpoint="best")[1].history["epoch"] == [1, 2]


def test_early_stopping_on_the_test_split_is_said_to_bias_the_test_score(tmp_path, tiny_npz):
    messages = []

    class Collect(runs.Reporter):
        def message(self, text):
            messages.append(text)
    start(tmp_path, tiny_npz, epochs=2, patience=1).train(Collect())
    assert any("note: early stopping selects the best epoch by its loss on the test split" in m
               for m in messages), messages
    best = runs.evaluate_run(tmp_path / "run", "cpu")
    assert best["checkpoint"] == runs.BEST_CHECKPOINT_FILE and "optimistically" in best["selection_note"]
    assert "selection_note" not in runs.evaluate_run(tmp_path / "run", "cpu", checkpoint="last")
    held_out = runs.start_run(tmp_path / "held-out", {"hidden": (8,), "latent_dim": 2},
                              TrainingOptions(batch_size=10, epochs=2, patience=1, val_fraction=0.2),
                              runs.RunOptions(data=str(tiny_npz), device="cpu"))
    messages.clear()
    held_out.train(Collect())
    assert not any("optimistically" in m for m in messages)
    assert "selection_note" not in runs.evaluate_run(held_out.folder, "cpu")


def test_fit_and_a_run_refuse_a_batch_larger_than_the_training_set_alike(tmp_path, tiny_npz):
    rule = r"training option batch_size = 71: larger than the training set"
    with pytest.raises(OptionError, match=rule + r" \(70 examples\)"):
        small_model().fit(toy_data(70), epochs=1, batch_size=71)
    with pytest.raises(OptionError, match=rule + r" of tiny.npz \(70 examples\)"):
        runs.start_run(tmp_path / "run", {"hidden": (8,)}, TrainingOptions(batch_size=71),
                       runs.RunOptions(data=str(tiny_npz), device="cpu"))
    assert not (tmp_path / "run").exists()


def test_a_lost_best_model_of_a_patience_run_is_refused_not_replaced_by_the_last(
        tmp_path, tiny_npz, scripted_val_loss):
    scripted_val_loss.extend([5.0, 3.0, 4.0])          # best epoch 2; patience 5: no stop
    start(tmp_path, tiny_npz, epochs=3, patience=5).train(runs.Reporter())
    folder = tmp_path / "run"
    best = folder / runs.BEST_CHECKPOINT_FILE
    assert cupyvae.load(best).history["epoch"] == [1, 2]
    best.unlink()
    with pytest.raises(runs.RunError, match=r"best\.safetensors does not exist: the model of the "
                                            r"run's best epoch 2 .*use --checkpoint last"):
        runs.load_run(folder, "cpu", checkpoint="best")
    best.mkdir()
    with pytest.raises(runs.RunError, match=r"best\.safetensors is not a file: .* epoch 2"):
        runs.checkpoint_path(folder, "best")
    assert runs.checkpoint_path(folder, "last").name == runs.CHECKPOINT_FILE
    # Resuming inherits the patience, which no flag unsets: the advice must be followable.
    with pytest.raises(runs.RunError) as error:
        runs.resume_run(folder, {"epochs": 5})
    message = str(error.value)
    assert "is not a file" in message and "does not exist" not in message
    assert "--checkpoint last" in message and "start a new run" in message
    assert "without --patience" not in message
    runs.RunLock(folder).release()                     # the refused resume let its lock go


def test_a_missing_best_model_whose_epoch_is_the_last_is_the_last_checkpoint(
        tmp_path, tiny_npz, scripted_val_loss):
    scripted_val_loss.extend([5.0, 4.0])               # best = last: killed before writing best
    start(tmp_path, tiny_npz, epochs=2, patience=5).train(runs.Reporter())
    folder = tmp_path / "run"
    (folder / runs.BEST_CHECKPOINT_FILE).unlink()
    assert runs.checkpoint_path(folder, "best").name == runs.CHECKPOINT_FILE


def test_the_early_stop_message_counts_the_epochs_since_the_best():
    # Patience lowered after the fact: 4 epochs without improvement, patience 2.  The
    # message counts what happened, not the patience.
    history = {"epoch": [1, 2, 3, 4, 5, 6], "val_loss": [5.0, 4.0, 4.5, 4.6, 4.7, 4.8]}
    message = runs.early_stop_message(history, 2)
    assert "stopped early at epoch 6" in message
    assert "has not improved for 4 epochs since epoch 2" in message and "patience 2" in message
    assert runs.early_stop_message(history, 5) is None
