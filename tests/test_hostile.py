"""Hostile input, as a careless or malicious user gives it: every case must end in a clear
error naming the field (or argument, or file) before any work, or succeed -- never a hang,
tens of GB allocated, or a traceback from deep inside NumPy.

Each test holds the input that showed a fault, rebuilt small; the fix sits at the boundary
that catches the whole class (named in each section).
"""
import subprocess
import sys
import time

import numpy as np
import pytest

import cupyvae
from cupyvae import memory
from cupyvae.checkpoint import CheckpointError
from cupyvae.options import OptionError

from test_cli import assert_one_line_error, run_cli

X = np.random.default_rng(0).random((20, 4)).astype(np.float32)


# ----------------------------------------------------- sizes the machine cannot hold
# Boundary: ModelSpec (every model: API, CLI, checkpoint) and the decoded rows of
# sample/decode, checked by cupyvae.memory before anything is allocated.
def test_a_model_too_large_for_any_machine_is_refused_at_once_naming_the_fields():
    start = time.perf_counter()
    with pytest.raises(memory.MemoryLimitError, match=r"hidden=\(1000000000000,\).*reduce hidden"):
        cupyvae.VAE((784,), hidden=(10 ** 12,))
    with pytest.raises(memory.MemoryLimitError, match="latent_dim=10000000000"):
        cupyvae.VAE((4,), hidden=(), latent_dim=10 ** 10)
    assert time.perf_counter() - start < 5   # nothing was allocated


def test_the_model_size_is_checked_against_the_memory_limit(monkeypatch):
    monkeypatch.setattr(memory, "memory_limit", lambda: 1 << 20)   # 1 MiB
    cupyvae.VAE((16,), hidden=(8,))             # ~300 parameters: fits
    # 784*200 weights alone are 0.6 MB; with gradients and Adam moments 2.5 MB > 1 MiB.
    with pytest.raises(memory.MemoryLimitError, match=r"need 2\.\d GiB|need 0\.\d GiB"):
        cupyvae.VAE((784,), hidden=(200,))


def test_the_memory_limit_follows_ulimit_v():
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
            "from cupyvae import memory; print(memory.memory_limit())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert int(out.stdout) <= 3 << 30, out.stderr


def test_sampling_more_rows_than_memory_holds_is_refused_naming_n():
    model = cupyvae.VAE((4,), hidden=(3,))
    with pytest.raises(memory.MemoryLimitError, match=r"sample\(n=10000000000000\).*reduce n"):
        model.sample(10 ** 13)
    with pytest.raises(memory.MemoryLimitError, match="reduce n"):
        model.sample(10 ** 13, seed=1)


def test_decoding_more_rows_than_memory_holds_is_refused(monkeypatch):
    model = cupyvae.VAE((4,), hidden=(3,))
    monkeypatch.setattr(memory, "memory_limit", lambda: 1000)   # bytes: 31 rows of 4 + 4 floats
    assert model.decode(np.zeros((31, 2), np.float32)).shape == (31, 4)
    with pytest.raises(memory.MemoryLimitError, match="rows of z"):
        model.decode(np.zeros((32, 2), np.float32))


def test_cli_train_with_a_huge_hidden_layer_fails_in_one_line(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(1).random((30, 4, 4)).astype(np.float32))
    result = run_cli("train", "--data", tmp_path / "x.npy", "--hidden", "1000000000000",
                     "--out", tmp_path / "run", "--device", "cpu", "-q", timeout=60)
    assert_one_line_error(result, "hidden", "GiB")
    assert not (tmp_path / "run").exists()      # refused before the run folder was made


# ----------------------------------------------------- a training step the machine cannot hold
# Boundary: VAE.validate_training_options (fit, a new run folder, --resume), which checks
# cupyvae.memory.training_step_bytes against the memory limit before any work; and the
# options' uint32 bounds on counts (TrainingOptions, log_likelihood's n_samples, the CLI).
def step_bytes(model, batch, rows):
    from cupyvae.model import PARAMETER_BUFFERS
    return memory.training_step_bytes(model.spec, batch, rows,
                                      model.spec.layout.size * 4 * PARAMETER_BUFFERS)


def test_a_training_step_beyond_the_memory_limit_is_refused_naming_batch_size(monkeypatch):
    model = cupyvae.VAE((4,), hidden=(3,))
    monkeypatch.setattr(memory, "memory_limit", lambda: step_bytes(model, 10, 10))
    model.fit(X, epochs=1, batch_size=10)            # exactly at the limit: trains
    with pytest.raises(memory.MemoryLimitError, match=r"^training option batch_size = 11: .*"
                       r"reduce batch_size or hidden$"):
        model.fit(X, epochs=1, batch_size=11)
    assert model.history["epoch"] == [1]            # refused before the epoch began


def test_an_iwae_step_of_a_billion_rows_is_refused_at_once_naming_iw_samples(tmp_path):
    model = cupyvae.VAE((4,), hidden=(3,))
    start = time.perf_counter()
    with pytest.raises(memory.MemoryLimitError,
                       match=r"batch_size 10 x iw_samples 100000000 \(1,000,000,000 decoded rows\)"
                             r".*reduce batch_size, iw_samples or hidden"):
        model.fit(X, epochs=1, batch_size=10, objective="iwae", iw_samples=10 ** 8,
                  checkpoint=tmp_path / "model.safetensors")
    assert time.perf_counter() - start < 5 and not model.history["epoch"]
    assert not (tmp_path / "model.safetensors").exists()


def test_the_training_step_estimate_is_a_lower_bound_of_what_a_step_allocates():
    # tracemalloc sees NumPy's allocations; a warm-up fit first, so one-time caches are not
    # counted.  The estimate claims a lower bound: the traced peak must reach it.
    import tracemalloc
    x = np.random.default_rng(0).random((64, 256)).astype(np.float32)
    cupyvae.VAE((256,), hidden=(8,)).fit(x, epochs=1, batch_size=64, objective="iwae", iw_samples=2)
    for objective, k in (("elbo", 1), ("iwae", 16)):
        tracemalloc.start()
        try:
            model = cupyvae.VAE((256,), hidden=(512,), latent_dim=5)
            model.fit(x, epochs=1, batch_size=64, objective=objective, iw_samples=k)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        estimate = step_bytes(model, 64, 64 * k)
        assert estimate <= peak, (objective, estimate, peak)
        assert estimate > 64 * k * 512 * 4            # it counts the decoder's rows


def test_cli_train_with_a_huge_iwae_step_fails_in_one_line_and_keeps_the_old_run(trained_run, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = sorted(p.name for p in run.iterdir())
    result = run_cli("train", "--data", trained_run.parent / "x.npy", "--hidden", "3",
                     "--batch-size", "10", "--objective", "iwae", "--iw-samples", "100000000",
                     "--out", run, "--force", "--device", "cpu", "-q", timeout=60)
    assert_one_line_error(result, "--iw-samples 100000000", "--batch-size", "GiB")
    assert sorted(p.name for p in run.iterdir()) == before     # --force wiped nothing


def test_decoder_rows_beyond_uint32_are_an_option_error_naming_both_fields():
    cupyvae.TrainingOptions(objective="iwae", batch_size=1, iw_samples=2 ** 32 - 1)
    with pytest.raises(OptionError, match=r"^training option iw_samples = 2147483648: "
                       r"batch_size 2 x iw_samples 2147483648 = 4,294,967,296 decoder rows"):
        cupyvae.TrainingOptions(objective="iwae", batch_size=2, iw_samples=2 ** 31)


@pytest.mark.parametrize("count", [2 ** 32, 10 ** 12, 10 ** 30])
def test_importance_sample_counts_beyond_uint32_are_refused_at_once(count):
    model = cupyvae.VAE((4,), hidden=(3,))
    start = time.perf_counter()
    with pytest.raises(OptionError, match=r"^argument n_samples = .*integer in \[1, 4294967295\]"):
        model.log_likelihood(X, count)
    with pytest.raises(OptionError, match=r"^training option iw_samples = "):
        cupyvae.TrainingOptions(objective="iwae", iw_samples=count)
    assert time.perf_counter() - start < 5


def test_cli_evaluate_refuses_importance_samples_beyond_uint32(trained_run):
    for count in ("4294967296", "99999999999999999999999"):
        result = run_cli("evaluate", trained_run, "--iw-samples", count, "-q", timeout=60)
        assert_one_line_error(result, "--iw-samples", "4294967295")


# ----------------------------------------------------- BLAS thread counts
# Boundary: cupyvae.threads.thread_count, the one rule of TrainingOptions.threads, the
# methods' `threads` keyword and evaluate's --threads.
@pytest.mark.parametrize("threads", [1025, 2 ** 63, 10 ** 20])
def test_thread_counts_beyond_the_bound_are_refused_naming_threads(threads):
    from cupyvae.threads import MAX_THREADS
    assert cupyvae.TrainingOptions(threads=MAX_THREADS).threads == 1024
    model = cupyvae.VAE((4,), hidden=(3,))
    with pytest.raises(OptionError, match=r"^training option threads = .*\[1, 1024\]"):
        model.fit(X, epochs=1, batch_size=10, threads=threads)
    with pytest.raises(OptionError, match=r"^argument threads = "):
        model.loss(X, threads=threads)
    assert not model.history["epoch"]


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_cli_refuses_a_thread_count_beyond_the_bound(tmp_path, command):
    args = (["train", "--data", tmp_path / "x.npy", "--out", tmp_path / "run"]
            if command == "train" else ["evaluate", tmp_path / "run"])
    result = run_cli(*args, "--threads", "99999999999999999999", timeout=60)
    assert_one_line_error(result, "--threads", "1024")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------- counts and seeds of the methods
# Boundary: cupyvae.options.check_argument, the options' strict integer rule for every
# count or seed a method takes.
@pytest.mark.parametrize("bad", [0, -1, 2.5, 3.0, "3", True, None, float("nan"), float("inf")])
def test_bad_sample_counts_fail_naming_n(bad):
    model = cupyvae.VAE((4,), hidden=(3,))
    for method in (model.sample, model.sample_latent):
        with pytest.raises(ValueError, match=r"^argument n = .*must be an integer >= 1"):
            method(bad)


@pytest.mark.parametrize("bad", [None, float("inf"), float("nan"), 4.0])
def test_bad_importance_sample_counts_fail_naming_n_samples(bad):
    with pytest.raises(ValueError, match=r"^argument n_samples = .*must be an integer >= 1"):
        cupyvae.VAE((4,), hidden=(3,)).log_likelihood(X, bad)


@pytest.mark.parametrize("bad", [-1, 2.5, "a", 2 ** 64])
def test_bad_sampling_seeds_fail_naming_seed(bad):
    with pytest.raises(ValueError, match=r"^argument seed = "):
        cupyvae.VAE((4,), hidden=(3,)).sample(2, seed=bad)


def test_numpy_integer_counts_and_seeds_are_accepted():
    model = cupyvae.VAE((4,), hidden=(3,))
    assert model.sample(np.int64(3), seed=np.uint64(5)).shape == (3, 4)
    assert model.log_likelihood(X[:2], np.int32(2)).shape == (2,)


# ----------------------------------------------------- errors writing a file
# Boundary: cupyvae.files.write_atomic, which every writer uses: an OSError names the file
# the user asked for, never the temporary file beside it.
def test_a_write_error_names_the_target_not_the_temporary_file(tmp_path, monkeypatch):
    from cupyvae.files import write_atomic
    (tmp_path / "out.npy").mkdir()
    with pytest.raises(IsADirectoryError) as error:
        write_atomic(tmp_path / "out.npy", b"x")
    assert error.value.filename == str(tmp_path / "out.npy") and ".tmp" not in str(error.value)

    import errno
    import os

    def disk_full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left") as error:
        write_atomic(tmp_path / "full.bin", b"x")
    assert error.value.filename == str(tmp_path / "full.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]   # no temporary left


def test_cli_sample_to_a_directory_names_it(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(1).random((30, 4)).astype(np.float32))
    run = tmp_path / "run"
    train = run_cli("train", "--data", tmp_path / "x.npy", "--hidden", "3", "--epochs", "1",
                    "--batch-size", "10", "--out", run, "--device", "cpu", "-q")
    assert train.returncode == 0, train.stderr
    (tmp_path / "taken.npy").mkdir()
    line = assert_one_line_error(run_cli("sample", run, "-o", tmp_path / "taken.npy"),
                                 "taken.npy", "Is a directory")
    assert ".tmp" not in line


# ----------------------------------------------------- config.json edited by hand
# Boundaries: cupyvae.files.parse_json (every JSON cupyvae reads: config.json, checkpoint
# metadata, the emulator cache's manifests) and runs.read_config (format, dataset section).
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-run")
    np.save(folder / "x.npy", np.random.default_rng(1).random((40, 4)).astype(np.float32))
    result = run_cli("train", "--data", folder / "x.npy", "--hidden", "3", "--epochs", "1",
                     "--batch-size", "10", "--out", folder / "run", "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr
    return folder / "run"


def edited_copy(run, tmp_path, text: str):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "config.json").write_text(text)
    return copy


def edit_json(run, edit):
    import json
    content = json.loads((run / "config.json").read_text())
    edit(content)
    return json.dumps(content)


@pytest.mark.parametrize("edit, fragment", [
    (lambda c: c.update(format=99), "format 99; this cupyvae"),
    (lambda c: c.update(format="2"), "format '2'"),
    (lambda c: c.update(format=True), "format True"),
    (lambda c: c["dataset"].update(validation_examples="6"), "validation_examples = '6': must be an integer"),
    (lambda c: c["dataset"].update(train_examples=-5), "train_examples = -5"),
    (lambda c: c["dataset"].pop("train_examples"), "dataset: missing keys ['train_examples']"),
    (lambda c: c["dataset"].update(name=7), "dataset name = 7: must be a non-empty string"),
])
def test_a_hand_edited_config_is_refused_naming_the_field(trained_run, tmp_path, edit, fragment):
    from cupyvae import runs
    folder = edited_copy(trained_run, tmp_path, edit_json(trained_run, edit))
    with pytest.raises(runs.RunError, match="config.json") as error:
        runs.read_config(folder)
    assert fragment in str(error.value)


@pytest.mark.parametrize("text, fragment", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"format": 2, "model": 1' + "0" * 5000 + "}", "4300 digits"),
    ("\xff\xfe garbage", "damaged"),
], ids=["deep", "long-int", "garbage"])   # short ids: pytest passes the id to children in env
def test_config_json_that_json_cannot_parse_is_refused_naming_the_file(trained_run, tmp_path,
                                                                        text, fragment):
    folder = edited_copy(trained_run, tmp_path, text)
    for command in (("evaluate", folder, "-q"), ("train", "--resume", "--out", folder, "-q")):
        assert_one_line_error(run_cli(*command), "config.json", fragment)


def test_a_config_written_before_format_numbers_still_reads(trained_run, tmp_path):
    from cupyvae import runs
    folder = edited_copy(trained_run, tmp_path, edit_json(trained_run, lambda c: c.pop("format")))
    assert runs.read_config(folder).dataset["train_examples"] == 36   # 40 rows, 10% test


def test_checkpoint_metadata_nested_too_deeply_is_a_checkpoint_error(tmp_path):
    """The digests are no signature: whoever edits the file can recompute them."""
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open
    from cupyvae import checkpoint
    path = tmp_path / "m.safetensors"
    cupyvae.VAE((4,), hidden=(3,)).save(path)
    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
    meta["history"] = "[" * 100_000 + "]" * 100_000
    meta[checkpoint.METADATA_DIGEST] = '"' + checkpoint._metadata_digest(meta) + '"'
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(checkpoint.CheckpointError, match="nested too deeply"):
        cupyvae.load(path)


# ----------------------------------------------------- array arguments of the API
# Boundary: cupyvae.model.as_array, the one conversion of every array argument (the data
# of fit/encode/loss/..., the codes of decode, the noise of loss_and_grads).
def test_ragged_lists_are_refused_naming_the_argument():
    model = cupyvae.VAE((2,), hidden=(3,))
    with pytest.raises(ValueError, match="^x_train is not an array of numbers"):
        model.fit([[0.1, 0.2], [0.3]], epochs=1, batch_size=1)
    with pytest.raises(ValueError, match="^z is not an array of numbers"):
        model.decode([[0.1, 0.2], [0.3]])


def test_masked_values_are_refused_not_silently_unmasked():
    model = cupyvae.VAE((4,), hidden=(3,))
    masked = np.ma.masked_array(X, mask=X > 0.9)
    with pytest.raises(ValueError, match=r"x_train is a masked array with \d+ masked values"):
        model.fit(masked, epochs=1, batch_size=5)
    # A masked array without masked values is just an array.
    assert model.encode(np.ma.masked_array(X)).shape == (20, 2)


def test_codes_beyond_float32_are_refused_without_an_overflow_warning():
    import warnings
    model = cupyvae.VAE((4,), hidden=(3,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="beyond float32's range"):
            model.decode(np.full((1, 2), 1e300))


@pytest.mark.parametrize("hidden", [5, None, "5", 2.5])
def test_a_hidden_that_is_no_list_is_an_option_error(hidden):
    with pytest.raises(ValueError, match="hidden = .*must be a list of positive integers"):
        cupyvae.VAE((4,), hidden=hidden)


def test_hidden_as_any_iterable_of_integers_still_works():
    assert cupyvae.VAE((4,), hidden=np.array([5, 3])).config.hidden == (5, 3)
    assert cupyvae.VAE((4,), hidden=[]).config.hidden == ()


# ----------------------------------------------------- labels beyond int64
# Boundaries: the two label readers (datasets._as_labels for .npz, csvdata._read_labels).
def test_csv_integer_labels_beyond_int64_are_refused_naming_the_column(tmp_path):
    from cupyvae.datasets import DatasetError, load_dataset
    path = tmp_path / "t.csv"
    path.write_text("a,b,kind\n" + "".join(f"0.1,0.2,{n}\n" for n in (1, 2, 10 ** 23)))
    with pytest.raises(DatasetError, match=r"label column 'kind': '100000000000000000000000' does not fit"):
        load_dataset(f"{path}#label=kind")


def test_npz_uint64_labels_that_would_wrap_are_refused(tmp_path):
    from cupyvae.datasets import DatasetError, load_dataset
    x = np.random.default_rng(0).random((4, 3)).astype(np.float32)
    np.savez(tmp_path / "ok.npz", x=x, y=np.arange(4, dtype=np.uint64))
    assert load_dataset(str(tmp_path / "ok.npz")).y_train.dtype == np.int64
    np.savez(tmp_path / "d.npz", x=x, y=np.full(4, 2 ** 63 + 5, np.uint64))
    with pytest.raises(DatasetError, match="y holds 9223372036854775813, which does not fit"):
        load_dataset(str(tmp_path / "d.npz"))


@pytest.mark.parametrize("member, content, fragment", [
    ("x_train.npy", b"garbage", "member x_train.npy is not a valid .npy array (it starts b'garbage')"),
    ("y_train.npy", b"", "member y_train.npy is not a valid .npy array (it is empty)"),
    ("x_test", b"raw", "member x_test is not a valid .npy array"),
], ids=["garbage", "empty", "no-suffix"])
def test_an_npz_member_that_is_no_npy_array_is_named(tmp_path, member, content, fragment):
    # np.load hands such a member back as raw bytes; the loader must not take them for data.
    import io
    import re
    import zipfile
    from cupyvae.datasets import DatasetError, load_dataset
    good = io.BytesIO()
    np.save(good, np.random.default_rng(0).random((4, 3)).astype(np.float32))
    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(path, "w") as archive:
        if member != "x_train.npy":
            archive.writestr("x_train.npy", good.getvalue())
        archive.writestr(member, content)
    with pytest.raises(DatasetError, match=f"^{re.escape(str(path))}: {re.escape(fragment)}"):
        load_dataset(str(path))


# ----------------------------------------------------- a checkpoint that is no file
# Boundary: checkpoint.read_checkpoint (every load), which resume now reaches too.
@pytest.mark.parametrize("make, fragment", [
    (lambda p: p.mkdir(), "is a folder, not a file"),
    (lambda p: p.symlink_to(p.name), "symbolic link to nothing readable"),   # a loop
    (lambda p: p.symlink_to("gone.safetensors"), "symbolic link to nothing readable"),
], ids=["folder", "link-loop", "dangling-link"])
def test_a_checkpoint_that_is_no_file_is_named_as_such(trained_run, tmp_path, make, fragment):
    import shutil
    folder = tmp_path / "run"
    shutil.copytree(trained_run, folder)
    (folder / "checkpoint.safetensors").unlink()
    make(folder / "checkpoint.safetensors")
    with pytest.raises(CheckpointError, match=fragment):
        cupyvae.load(folder / "checkpoint.safetensors")
    assert_one_line_error(run_cli("train", "--resume", "--out", folder, "--epochs", "3", "-q"),
                          "checkpoint.safetensors", fragment)


# ----------------------------------------------------- finite options that overflow the loss
# Boundary: model.divergence_advice, the one message of TrainingDiverged.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the overflow is the input
def test_divergence_from_a_huge_loss_option_names_that_option():
    # free bits 3e38 nats on each of 2 latent dimensions: the loss overflows to inf.
    model = cupyvae.VAE((4,), hidden=(3,))
    with pytest.raises(cupyvae.model.TrainingDiverged, match=r"check free_bits=3e\+38\.$"):
        model.fit(X, epochs=1, batch_size=5, free_bits=3e38)
    advice = cupyvae.model.divergence_advice(
        cupyvae.training.TrainingOptions(kl_weight=1e30, weight_decay=0.5))
    assert advice.endswith("check kl_weight=1e+30, weight_decay=0.5."), advice


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_with_default_options_blames_only_the_learning_rate():
    model = cupyvae.VAE((4,), hidden=(3,))
    with pytest.raises(cupyvae.model.TrainingDiverged, match=r"smaller learning rate\.$"):
        model.fit(X, epochs=1, batch_size=5, lr=1e30)


# Boundary: options.number, every float option (the kernels keep them in float32).
@pytest.mark.parametrize("option", ["lr", "kl_weight", "free_bits", "weight_decay", "lr_min",
                                    "clip_norm"])
def test_float_options_beyond_float32_are_refused_naming_the_field(option):
    from cupyvae.options import OptionError
    from cupyvae.training import TrainingOptions
    with pytest.raises(OptionError, match=f"{option} = 1e\\+39: .*float32's largest"):
        TrainingOptions(**{option: 1e39})
    if option != "lr_min":   # lr_min needs the cosine schedule; its bound is the same check
        TrainingOptions(**{option: 3e38})


def test_cli_refuses_a_kl_weight_beyond_float32():
    assert_one_line_error(run_cli("train", "--kl-weight", "1e308", "--epochs", "1"),
                          "--kl-weight", "float32")


# ----------------------------------------------------- a '#' in a CSV file's name
# Boundary: csvdata._split_reference, which every CSV reference goes through.
@pytest.mark.parametrize("name", ["we#ird.csv", "run#3.csv#x.csv"])
def test_a_hash_in_a_csv_file_name_stays_in_the_path(tmp_path, name):
    from cupyvae.csvdata import csv_reference, parse_csv_reference
    from cupyvae.datasets import load_dataset
    path = tmp_path / name
    path.write_text("a,b,kind\n" + "".join(f"0.{i},0.5,{'xy'[i % 2]}\n" for i in range(6)))
    with pytest.raises(ValueError, match="'x' is not a number"):   # read as the file it is
        load_dataset(str(path))
    labelled = load_dataset(f"{path}#label=kind")
    assert labelled.x_train.shape[1] == 2 and labelled.label_names == ("x", "y")
    assert parse_csv_reference(csv_reference(path, {"label": "kind"})) == (path, {"label": "kind"})


# ----------------------------------------------------- output paths the user gives
# Boundary: runs.check_output_path, the one check of sample -o, encode -o and explore --save:
# the writer's suffix, a folder that exists, never one of cupyvae's own files in a run folder.
def test_no_output_path_may_be_a_runs_own_file(tmp_path):
    from pathlib import Path

    from cupyvae import runs
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / runs.CONFIG_FILE).write_text("{}")
    for name in [*runs.run_files(), runs.LOCK_FILE]:
        suffix = [Path(name).suffix]
        for path in (run / name, run / "sub" / ".." / name, run / name.upper()):
            with pytest.raises(runs.RunError, match="file of the run"):
                runs.check_output_path(path, suffix)
        assert runs.check_output_path(tmp_path / name, suffix) == tmp_path / name  # no run here
    assert runs.check_output_path(run / "samples-64.png", [".png"])   # sample's own default


@pytest.mark.parametrize("command, flag, target, fragment", [
    ("explore", "--save", "config.json", "must end in .png"),
    ("explore", "--save", "checkpoint.safetensors", "must end in .png"),
    ("explore", "--save", "latent.png", "file of the run"),
    ("sample", "-o", "manifold.png", "file of the run"),
    ("encode", "-o", "metrics.csv", "file of the run")])
def test_cli_writers_refuse_the_runs_own_files(trained_run, command, flag, target, fragment):
    path = trained_run / target
    before = path.read_bytes()
    assert_one_line_error(run_cli(command, trained_run, flag, path, "--device", "cpu"),
                          str(path), fragment)
    assert path.read_bytes() == before


@pytest.mark.parametrize("command, flag, name, fragment", [
    ("explore", "--save", "x.txt", "must end in .png"), ("explore", "--save", "e1", ".png"),
    ("explore", "--save", "e1.pdf", ".png"), ("explore", "--save", "", "is not a file name"),
    ("explore", "--save", "missing/e.png", "folder"), ("sample", "-o", "missing/x.png", "folder"),
    ("encode", "-o", "missing/c.csv", "folder")])
def test_cli_writers_refuse_a_wrong_suffix_or_a_missing_folder(trained_run, tmp_path, command,
                                                               flag, name, fragment):
    target = str(tmp_path / name) if name else ""
    line = assert_one_line_error(run_cli(command, trained_run, flag, target, "--device", "cpu"),
                                 fragment)
    if "missing" in name:
        assert f"{tmp_path / 'missing'} does not exist" in line
    assert list(tmp_path.iterdir()) == []           # nothing written, no folder created


# ----------------------------------------------------- arguments checked before the work
# Boundaries: VAE.fit's checkpoint path (cupyvae.files.check_writable_file), explore's and
# bits_per_dim's arguments (check_argument), the emulator's environment (emulator env_int).
def test_a_checkpoint_path_that_cannot_be_written_is_refused_before_training(tmp_path):
    model = cupyvae.VAE((4,), hidden=(3,))
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    for path, fragment in ((tmp_path / "folder", "is a folder, not a file"),
                           (tmp_path / "file" / "m.safetensors", "file is a file, not a folder")):
        with pytest.raises(ValueError, match=f"^checkpoint {path}.*{fragment}"):
            model.fit(X, epochs=1, batch_size=10, checkpoint=path)
    assert not model.history["epoch"]                    # refused before the first epoch
    model.fit(X, epochs=1, batch_size=10, checkpoint=tmp_path / "new" / "m.safetensors")
    assert (tmp_path / "new" / "m.safetensors").is_file()   # missing folders are made


@pytest.mark.parametrize("bad", [None, -1, 0, 2.5, "3"])
def test_explore_refuses_a_bad_slider_count_naming_it(bad):
    # Checked before ipywidgets is imported, so this runs without the notebook extra.
    with pytest.raises(OptionError, match=r"^argument max_sliders = .*integer >= 1"):
        cupyvae.explore(cupyvae.VAE((4,), hidden=(3,)), max_sliders=bad)


@pytest.mark.parametrize("value", ["abc", "0", "-2", "99999999999", "2.5"])
def test_a_bad_emulator_worker_count_names_the_variable(monkeypatch, value):
    from cupyvae.emulator import _core
    monkeypatch.setenv("CUPYVAE_EMU_WORKERS", "3")
    assert _core._default_workers() == 3
    monkeypatch.setenv("CUPYVAE_EMU_WORKERS", value)
    with pytest.raises(ValueError, match=rf"^environment variable CUPYVAE_EMU_WORKERS='{value}': "
                                         r"must be an integer in \[1, 1024\]"):
        _core._default_workers()


def test_bits_per_dim_refuses_a_non_bool_binarized_and_log_px_of_another_length():
    model = cupyvae.VAE((4,), hidden=(3,), likelihood="continuous-bernoulli")
    log_px = -np.arange(len(X), dtype=np.float64)
    assert model.bits_per_dim(log_px, X, binarized=True).shape == (len(X),)
    assert np.shape(model.bits_per_dim(-3.0, X)) == ()      # a mean over x
    for bad in ("no", 0, None):
        with pytest.raises(OptionError, match=r"^argument binarized = .*true or false"):
            model.bits_per_dim(log_px, X, binarized=bad)
        with pytest.raises(OptionError, match=r"^argument binarized = "):
            model.bits_per_dim_basis(X, binarized=bad)
    with pytest.raises(ValueError, match=r"log_px has shape \(19,\); expected \(20,\)"):
        model.bits_per_dim(log_px[1:], X)
