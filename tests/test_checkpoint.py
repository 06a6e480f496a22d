"""Tampered checkpoints: every fault ends in a CheckpointError naming the file and the problem,
before a model is built.

Most faults are written with `save_checkpoint`, which stores fresh digests, so each test
reaches the structural check it is about; the bit-flip tests damage the bytes on disk.
"""
import json
import struct
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from safetensors.numpy import save as safetensors_save

import cupyvae
from cupyvae.checkpoint import (LEGACY_FORMAT, CheckpointError, load_checkpoint, read_checkpoint,
                                save_checkpoint)
from cupyvae.optim import Adam


def trained_model(**kw):
    args = dict(data_shape=(3, 4), latent_dim=2, hidden=(5,), seed=1)
    args.update(kw)
    model = cupyvae.VAE(**args)
    x = (np.random.default_rng(0).random((20, 12)) < 0.5).astype(np.float32)
    model.fit(x, x[:5], epochs=2, batch_size=10)
    return model


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "ck.safetensors"
    trained_model().save(path)
    return path


def rewrite(path, edit):
    """Apply edit(tensors, meta) to the decoded checkpoint and save it with fresh digests."""
    tensors, meta = read_checkpoint(path)
    edit(tensors, meta)
    save_checkpoint(path, tensors, meta)


def refused(path, *fragments):
    with pytest.raises(CheckpointError) as error:
        cupyvae.load(path)
    message = str(error.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_saved_checkpoint_round_trips_with_its_optimizer_and_history(checkpoint):
    loaded = cupyvae.load(checkpoint)
    assert loaded.history["epoch"] == [1, 2]
    assert loaded.optimizer.step_count == 4
    m, v = loaded._executor.host_moments()
    assert (v >= 0).all() and np.abs(m).max() > 0, "the moments are restored, not zeros"


# ---------------------------------------------------------------------- optimizer tensors
def test_missing_adam_moment(checkpoint):
    rewrite(checkpoint, lambda t, m: t.pop("adam.m"))
    refused(checkpoint, "['adam.m', 'adam.v', 'params']")


def test_adam_moment_of_the_wrong_length(checkpoint):
    rewrite(checkpoint, lambda t, m: t.update({"adam.m": t["adam.m"][:-3]}))
    refused(checkpoint, "'adam.m'", "shape")


def test_adam_moment_of_the_wrong_dtype(checkpoint):
    rewrite(checkpoint, lambda t, m: t.update({"adam.v": t["adam.v"].astype(np.float64)}))
    refused(checkpoint, "'adam.v'", "float64")


def test_nan_in_adam_m(checkpoint):
    def poison(tensors, _meta):
        tensors["adam.m"][7] = np.nan
    rewrite(checkpoint, poison)
    refused(checkpoint, "'adam.m'", "NaN/inf", "index 7")


def test_negative_adam_v(checkpoint):
    def negate(tensors, _meta):
        tensors["adam.v"][3] = -1e-12
    rewrite(checkpoint, negate)
    refused(checkpoint, "'adam.v'", "negative", "-1e-12", "index 3")


def test_adam_moments_without_adam_state(checkpoint):
    rewrite(checkpoint, lambda t, m: m.update(adam=None))
    refused(checkpoint, "without Adam state")


def test_nan_in_params(checkpoint):
    def poison(tensors, _meta):
        tensors["params"][0] = np.inf
    rewrite(checkpoint, poison)
    refused(checkpoint, "'params'", "NaN/inf")


# ---------------------------------------------------------------------- Adam metadata
@pytest.mark.parametrize("change, fragments", [
    ({"momentum": 0.9}, ["unknown keys ['momentum']"]),
    ({"lr": "fast"}, ["'lr' = 'fast'", "finite number"]),
    ({"lr": None}, ["'lr' = None", "finite number"]),
    ({"beta1": True}, ["'beta1' = True", "finite number"]),
    ({"eps": float("nan")}, ["'eps' = nan", "finite number"]),
    ({"step_count": 2.5}, ["'step_count' = 2.5", "non-negative integer"]),
    ({"step_count": -1}, ["'step_count' = -1", "non-negative integer"]),
    ({"beta2": 1.5}, ["invalid Adam state", "beta2"]),
    ({"lr": 0.0}, ["invalid Adam state", "learning rate"]),
    ({"eps": 0.0}, ["invalid Adam state", "eps must be positive"]),
])
def test_bad_adam_state(checkpoint, change, fragments):
    rewrite(checkpoint, lambda t, m: m["adam"].update(change))
    refused(checkpoint, *fragments)


@pytest.mark.parametrize("setting", [{"lr": float("inf")}, {"lr": float("nan")},
                                     {"weight_decay": float("nan")}, {"eps": float("inf")},
                                     {"beta1": float("nan")}])
def test_adam_itself_refuses_non_finite_settings(setting):
    """The check every Adam state goes through, from a checkpoint or from fit()."""
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        Adam(**setting)


def test_adam_state_missing_a_key(checkpoint):
    rewrite(checkpoint, lambda t, m: m["adam"].pop("step_count"))
    refused(checkpoint, "lacks ['step_count']")


def test_adam_state_not_an_object(checkpoint):
    rewrite(checkpoint, lambda t, m: m.update(adam=[0.001]))
    refused(checkpoint, "Adam state must be an object")


# ---------------------------------------------------------------------- history
@pytest.mark.parametrize("history, fragment", [
    (5, "history must be an object"),
    ({"epoch": [1, 2], "train_loss": [1.0], "val_loss": [1.0, 2.0], "seconds": [0.1, 0.1]},
     "different lengths"),
    ({"epoch": [1, 2], "train_loss": [1.0, 2.0], "val_loss": [1.0, 2.0]}, "lacks the columns ['seconds']"),
    ({"epoch": [1, 5], "train_loss": [1.0, 2.0], "val_loss": [1.0, 2.0], "seconds": [0.1, 0.1]},
     "epochs must be 1, 2, ..., n"),
    ({"epoch": [1, 2], "train_loss": [1.0, float("nan")], "val_loss": [None, None],
      "seconds": [0.1, 0.1]}, "'train_loss' entry 1 is nan"),
    ({"epoch": [1], "train_loss": [None], "val_loss": [None], "seconds": [0.1]},
     "'train_loss' entry 0 is None"),
    ({"epoch": [1], "train_loss": ["1.0"], "val_loss": [None], "seconds": [0.1]},
     "'train_loss' entry 0 is '1.0'"),
    ({"epoch": "12", "train_loss": [], "val_loss": [], "seconds": []}, "'epoch' must be a list"),
])
def test_bad_history(checkpoint, history, fragment):
    rewrite(checkpoint, lambda t, m: m.update(history=history))
    refused(checkpoint, fragment)


def test_history_without_validation_losses_loads(checkpoint):
    history = {"epoch": [1, 2], "train_loss": [3.0, 2.0], "val_loss": [None, None], "seconds": [0.1, 0.2]}
    rewrite(checkpoint, lambda t, m: m.update(history=history))
    assert cupyvae.load(checkpoint).history == history


# ---------------------------------------------------------------------- config vs tensors
def test_config_of_another_architecture(checkpoint):
    rewrite(checkpoint, lambda t, m: m.update(config=trained_model(hidden=(6,)).config.to_json()))
    refused(checkpoint, "'params'", "hidden=(6,)", "implies float32 of shape")


@pytest.mark.parametrize("hidden", [[300000], [10 ** 12], [10 ** 12, 10 ** 12]])
def test_oversized_config_is_refused_without_building_anything(checkpoint, hidden):
    def inflate(_tensors, meta):
        config = json.loads(meta["config"])
        config["hidden"] = hidden
        meta["config"] = json.dumps(config)
    rewrite(checkpoint, inflate)
    # Building this model would take 3.6 GB (hidden 300000) or more: the size check must
    # come first.  tracemalloc sees NumPy's allocations; 20 MB is far above what reading
    # a 1 kB checkpoint needs and far below any model of these sizes.
    tracemalloc.start()
    started = time.perf_counter()
    try:
        refused(checkpoint, "'params'", f"hidden={tuple(hidden)}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"peak {peak / 1e6:.1f} MB while refusing"
    assert time.perf_counter() - started < 10   # generous: a shared CI core; building took 43 s


@pytest.mark.parametrize("config, fragment", [
    ("{not json", "unusable config"),
    (json.dumps({"data_shape": [3, 4], "prior": "nope"}), "unknown prior 'nope'"),
    (json.dumps({"data_shape": [3, 4], "colour": "red"}), "unknown model options ['colour']"),
    (json.dumps([1, 2]), "unusable config"),
])
def test_unusable_config(checkpoint, config, fragment):
    rewrite(checkpoint, lambda t, m: m.update(config=config))
    refused(checkpoint, fragment)


def test_evaluate_refuses_an_oversized_config_in_one_line(tmp_path):
    """The CLI path of the same fault: no MemoryError traceback."""
    x = (np.random.default_rng(0).random((30, 3, 4)) < 0.5).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x[:20], x_test=x[20:])
    run_dir = tmp_path / "run"
    cli = [sys.executable, "-m", "cupyvae.cli"]
    subprocess.run([*cli, "train", "--data", tmp_path / "d.npz", "--hidden", "5", "--epochs", "1",
                    "--batch-size", "10", "--device", "cpu", "--out", run_dir],
                   check=True, capture_output=True)
    path = run_dir / "checkpoint.safetensors"

    def inflate(_tensors, meta):
        config = json.loads(meta["config"])
        config["hidden"] = [10 ** 12]
        meta["config"] = json.dumps(config)
    rewrite(path, inflate)
    result = subprocess.run([*cli, "evaluate", run_dir, "--device", "cpu"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    assert "checkpoint.safetensors" in result.stderr and "hidden=(1000000000000,)" in result.stderr


# ---------------------------------------------------------------------- flipped bits
def tensor_byte_ranges(data: bytes) -> dict[str, tuple[int, int]]:
    """Absolute byte range of each tensor's data in a safetensors file."""
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    start = 8 + header_len
    return {name: (start + info["data_offsets"][0], start + info["data_offsets"][1])
            for name, info in header.items() if name != "__metadata__"}


def flip_bit(path, offset: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("tensor", ["params", "adam.m", "adam.v"])
@pytest.mark.parametrize("where, bit", [(0.0, 0), (0.5, 3), (1.0, 6)])
def test_a_flipped_bit_in_tensor_data_is_refused(checkpoint, tensor, where, bit):
    start, end = tensor_byte_ranges(checkpoint.read_bytes())[tensor]
    # bit 0 of the first byte: the lowest mantissa bit, a change no range check could see
    flip_bit(checkpoint, start + int(where * (end - start - 1)), bit)
    refused(checkpoint, f"tensor {tensor!r}", "SHA-256")


def test_a_flipped_bit_in_the_metadata_is_refused(checkpoint):
    data = checkpoint.read_bytes()
    offset = data.index(b": 1", data.index(b"seed")) + 2   # the config's seed (JSON in JSON in JSON)
    flip_bit(checkpoint, offset, 1)                       # "1" -> "3": every level stays valid JSON
    refused(checkpoint, "metadata", "SHA-256")


def test_digests_cannot_simply_be_dropped(checkpoint):
    tensors, _ = read_checkpoint(checkpoint)
    from safetensors import safe_open
    with safe_open(str(checkpoint), framework="numpy") as f:
        raw = dict(f.metadata())
    del raw["tensor_sha256"]
    checkpoint.write_bytes(safetensors_save(tensors, metadata=raw))
    refused(checkpoint, "metadata", "SHA-256")


# ---------------------------------------------------------------------- the first format
def write_legacy(path, model) -> None:
    """A checkpoint as the code before digests wrote it (format 1, no digest entries)."""
    meta = {"format": LEGACY_FORMAT, "config": json.dumps(model.config.to_json()),
            "history": json.dumps(model.history), "adam": json.dumps(model.optimizer.state())}
    m, v = model._executor.host_moments()
    tensors = {"params": model.flat_params, "adam.m": m, "adam.v": v}
    path.write_bytes(safetensors_save(tensors, metadata=meta))


def test_first_format_checkpoints_still_load_and_are_still_checked(tmp_path):
    model = trained_model()
    path = tmp_path / "old.safetensors"
    write_legacy(path, model)
    loaded = cupyvae.load(path)
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)
    assert loaded.history == model.history and loaded.optimizer.step_count == 4
    model._executor.v[0] = -1.0
    write_legacy(path, model)
    refused(path, "negative")
    loaded.save(path)                                       # saving again writes digests
    assert "tensor_sha256" in read_checkpoint(path)[1]


def test_load_checkpoint_returns_the_validated_parts(checkpoint):
    parts = load_checkpoint(checkpoint)
    assert parts.config.hidden == (5,) and parts.params.dtype == np.float32
    m, v = parts.moments
    assert m.shape == v.shape == parts.params.shape and parts.optimizer.step_count == 4
