"""The run folder (cupyvae.runs) and the option dataclasses every entry point goes through.

Hand-edited config.json files, old-format run folders, killed writers' temporary files,
SIGTERM, and the command line generated from the option fields.
"""
import dataclasses
import re
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cupyvae
from cupyvae import runs
from cupyvae.cli import OPTION_CLASSES, main
from cupyvae.config import VAEConfig
from cupyvae.options import OptionError, cli_fields
from cupyvae.training import TrainingOptions

TINY_MODEL = {"hidden": (8,), "latent_dim": 2, "seed": 1}


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    x = (rng.random((60, 4, 4)) < 0.4).astype(np.float32)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x_train=x[:50], x_test=x[50:])
    return path


@pytest.fixture
def trained(tiny_npz, tmp_path) -> Path:
    run = runs.start_run(tmp_path / "run", TINY_MODEL, TrainingOptions(epochs=1, batch_size=10),
                         runs.RunOptions(data=str(tiny_npz), device="cpu"))
    run.train(runs.Reporter())
    return run.folder


def edit_config(folder: Path, section: str, **changes) -> None:
    path = folder / runs.CONFIG_FILE
    content = json.loads(path.read_text())
    content[section].update(changes)
    path.write_text(json.dumps(content))


# ---------------------------------------------------------------------- config.json
@pytest.mark.parametrize("section,changes,named", [
    ("run", {"limit": -5990}, "limit = -5990"),
    ("training", {"binarize": "no"}, "binarize = 'no'"),
    ("training", {"batch_size": "100"}, "batch_size = '100'"),
    ("training", {"lr": None}, "lr = None"),
    ("training", {"momentum": 0.9}, "unknown training options ['momentum']"),
    ("model", {"hidden": [8, -1]}, "hidden = [8, -1]"),
    ("run", {"device": "tpu"}, "device = 'tpu'"),
    ("dataset", {"validation_examples": "lots"}, "dataset validation_examples = 'lots'"),
    ("dataset", {"train_examples": 0}, "dataset train_examples = 0"),
    ("dataset", {"train_sha256": "abc"}, "dataset train_sha256 = 'abc'"),
    ("dataset", {"rows": 5}, "dataset: unknown keys ['rows']"),
])
def test_resume_refuses_an_invalid_stored_config_naming_the_field(trained, section, changes, named):
    edit_config(trained, section, **changes)
    with pytest.raises(runs.RunError, match=rf"config.json is invalid: .*{_escaped(named)}"):
        runs.resume_run(trained, {"epochs": 2})


def _escaped(text: str) -> str:
    import re
    return re.escape(text)


def test_a_format_1_run_folder_is_still_read_and_resumed(trained):
    """Format 1 (before the run section) kept data, limit and device under training."""
    path = trained / runs.CONFIG_FILE
    content = json.loads(path.read_text())
    content["training"].update(content.pop("run"))
    del content["training"]["execution"], content["format"]
    path.write_text(json.dumps(content))
    config = runs.read_config(trained)
    assert config.run.device == "cpu" and config.training.batch_size == 10
    run = runs.resume_run(trained, {"epochs": 2})
    run.train(runs.Reporter())
    assert json.loads(path.read_text())["format"] == runs.RUN_FORMAT
    assert len(cupyvae.load(trained / runs.CHECKPOINT_FILE).history["epoch"]) == 2


def test_resume_keeps_the_runs_options_but_may_change_device_and_epochs(trained):
    with pytest.raises(runs.RunError, match="--lr 0.5 differs from the run's 0.001"):
        runs.resume_run(trained, {"epochs": 2, "lr": 0.5})
    assert runs.resume_run(trained, {"epochs": 1}) is None       # it already has 1 epoch
    run = runs.resume_run(trained, {"epochs": 2, "device": "cpu", "lr": 0.001})   # same lr: fine
    assert run.config.training.epochs == 2


def test_the_stored_command_repeats_the_run(trained, tiny_npz, tmp_path):
    """config.json's command line, run again, writes the same config (but for --out)."""
    command = json.loads((trained / runs.CONFIG_FILE).read_text())["command"]
    words = shlex.split(command)
    assert words[:2] == ["cupyvae", "train"]
    again = tmp_path / "again"
    words[words.index("--out") + 1] = str(again)
    from click.testing import CliRunner
    result = CliRunner().invoke(main, words[1:], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    first, second = (runs.read_config(folder) for folder in (trained, again))
    assert (first.model, first.training, first.run) == (second.model, second.training, second.run)


# ---------------------------------------------------------------------- files
def test_stale_temporary_files_are_removed_by_the_next_run(trained):
    stale = [trained / ".checkpoint.safetensors.abc123.tmp", trained / ".latent.png.x.tmp"]
    foreign = trained / ".notes.txt.tmp"          # not ours: left alone
    for path in (*stale, foreign):
        path.write_bytes(b"partial")
    runs.resume_run(trained, {"epochs": 2})
    assert not any(path.exists() for path in stale)
    assert foreign.exists()


def test_sigterm_stops_like_ctrl_c(tiny_npz, tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "CUPYVAE_DEBUG")}
    env["MPLBACKEND"] = "Agg"
    process = subprocess.Popen(
        [sys.executable, "-m", "cupyvae.cli", "train", "--data", str(tiny_npz), "--epochs", "100000",
         "--hidden", "8", "--batch-size", "10", "--device", "cpu", "--out", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / runs.METRICS_FILE).exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        time.sleep(0.3)               # land somewhere inside a later epoch or a checkpoint write
        process.send_signal(signal.SIGTERM)
        _stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    saved = len(cupyvae.load(run_dir / runs.CHECKPOINT_FILE).history["epoch"])
    assert f"last complete checkpoint (epoch {saved})" in stderr
    assert not list(run_dir.glob(".*.tmp")), list(run_dir.iterdir())


# ---------------------------------------------------------------------- options
def test_every_option_field_is_a_flag_of_train_and_a_key_of_config_json(trained):
    from click.testing import CliRunner
    help_text = CliRunner().invoke(main, ["train", "--help"]).output
    stored = json.loads((trained / runs.CONFIG_FILE).read_text())
    sections = {runs.RunOptions: "run", VAEConfig: "model", TrainingOptions: "training"}
    for cls in OPTION_CLASSES:
        for f in cli_fields(cls):
            assert "--" + f.name.replace("_", "-") in help_text, f.name
            assert f.name in stored[sections[cls]], f.name


@pytest.mark.parametrize("field,value", [
    ("epochs", 0), ("epochs", True), ("batch_size", 2.0), ("lr", float("inf")), ("lr", -1e-3),
    ("weight_decay", float("nan")), ("binarize", 1), ("lr", "0.001"),
])
def test_training_options_refuse_bad_values_naming_the_field(field, value):
    with pytest.raises(OptionError, match=rf"training option {field} = "):
        TrainingOptions(**{field: value})


def test_training_options_are_frozen_and_replace_validates():
    options = TrainingOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.lr = 1.0
    with pytest.raises(OptionError, match="lr = 0"):
        options.replace(lr=0)
    with pytest.raises(ValueError, match="unknown training options"):
        options.replace(learning_rate=0.1)
    assert options.replace(lr=0.5).lr == 0.5


@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--lr", "inf"), ("--weight-decay", "nan"),
                                        ("--epochs", "0"), ("--limit", "-5")])
def test_nan_and_out_of_range_flags_are_refused_by_the_cli(flag, value, tiny_npz, tmp_path):
    from click.testing import CliRunner
    result = CliRunner().invoke(main, ["train", "--data", str(tiny_npz), flag, value,
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert flag in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()          # refused before anything was written


# ---------------------------------------------------------------------- the data of a run
def test_resume_refuses_data_that_changed_naming_the_file(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "d.npy"
    x = (rng.random((100, 6)) < 0.4).astype(np.float32)
    np.save(path, x)
    run = runs.start_run(tmp_path / "run", TINY_MODEL, TrainingOptions(epochs=1, batch_size=10),
                         runs.RunOptions(data=str(path), device="cpu", limit=40))
    run.train(runs.Reporter())
    x[60:65] = 1 - x[60:65]                    # rows past --limit, none of the test split
    np.save(path, x)
    assert runs.resume_run(run.folder, {"epochs": 2}) is not None
    for changed in (np.concatenate([x, x]),     # more rows: a longer test split
                    np.where(np.arange(100)[:, None] == 5, 1 - x, x)):   # same size, row 5 flipped
        np.save(path, changed)
        with pytest.raises(runs.RunError, match=rf"data of .* changed since the run started: "
                                                rf"{_escaped(str(path))} no longer gives"):
            runs.resume_run(run.folder, {"epochs": 2})


@pytest.mark.parametrize("train_low,test_high", [(-0.5, 1.0), (0.0, 3.0)])
def test_binarize_refuses_data_outside_zero_one_before_any_work(tmp_path, train_low, test_high):
    rng = np.random.default_rng(4)
    x = rng.random((40, 6)).astype(np.float32)
    x[3, 2], x[-1, 1] = train_low, test_high           # the last rows are the test split
    model = cupyvae.VAE((6,), likelihood="gaussian-real", hidden=(4,))
    with pytest.raises(ValueError, match=r"binarize: x_(train|val) has values in \[.*\].*\[0, 1\]"):
        model.fit(x[:36], x[36:], epochs=1, batch_size=6, binarize=True)
    assert model.history["epoch"] == []
    path = tmp_path / "wide.npy"
    np.save(path, x)
    with pytest.raises(ValueError,
                       match=r"binarize: the (training data|test split) .*wide.npy"):
        runs.start_run(tmp_path / "run", {"likelihood": "gaussian-real", "hidden": (4,)},
                       TrainingOptions(epochs=1, batch_size=6, binarize=True),
                       runs.RunOptions(data=str(path), device="cpu"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model_options,training,named", [
    ({"prior": "mog"}, {"free_bits": 0.5}, "free_bits = 0.5: free bits need a KL that factorises"),
    ({"hidden": (0,)}, {}, "hidden"),
])
def test_impossible_options_are_refused_before_the_data_are_loaded(tmp_path, model_options,
                                                                   training, named):
    with pytest.raises(ValueError, match=named):      # not "no such file"
        runs.start_run(tmp_path / "run", model_options, TrainingOptions(**training),
                       runs.RunOptions(data=str(tmp_path / "nothere.npy"), device="cpu"))
    assert not (tmp_path / "run").exists()


def test_force_removes_an_old_runs_sample_grids_but_nothing_else(trained, tiny_npz):
    (trained / "samples-64.png").write_bytes(b"old")
    (trained / "samples-mine.png").write_bytes(b"mine")
    runs.start_run(trained, TINY_MODEL, TrainingOptions(epochs=1, batch_size=10),
                   runs.RunOptions(data=str(tiny_npz), device="cpu"), force=True)
    assert not (trained / "samples-64.png").exists()
    assert (trained / "samples-mine.png").read_bytes() == b"mine"


def test_config_records_the_device_auto_resolved_to(tiny_npz, tmp_path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the no-GPU notice
        run = runs.start_run(tmp_path / "run", TINY_MODEL, TrainingOptions(epochs=1, batch_size=10),
                             runs.RunOptions(data=str(tiny_npz), device="auto"))
    content = json.loads((run.folder / runs.CONFIG_FILE).read_text())
    assert content["run"]["device"] == "auto" and content["device_used"] == run.model.device
    assert runs.read_config(run.folder).device_used == run.model.device
    content["device_used"] = "tpu"
    (run.folder / runs.CONFIG_FILE).write_text(json.dumps(content))
    with pytest.raises(runs.RunError, match="device_used = 'tpu'"):
        runs.read_config(run.folder)


def test_plot_says_that_the_last_checkpoint_is_damaged(tiny_npz, tmp_path):
    """The best checkpoint is fine, but the loss curves come from the last one: not
    silently from the best's shorter history."""
    run = runs.start_run(tmp_path / "run", TINY_MODEL,
                         TrainingOptions(epochs=2, batch_size=10, patience=5),
                         runs.RunOptions(data=str(tiny_npz), device="cpu"))
    run.train(runs.Reporter())
    assert (run.folder / runs.BEST_CHECKPOINT_FILE).is_file()
    checkpoint = run.folder / runs.CHECKPOINT_FILE
    checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    with pytest.raises(cupyvae.checkpoint.CheckpointError, match=runs.CHECKPOINT_FILE):
        runs.write_plots(run.folder, "cpu", checkpoint="best")


def test_a_limit_above_the_training_set_is_noted(tiny_npz, tmp_path):
    run = runs.start_run(tmp_path / "run", TINY_MODEL, TrainingOptions(epochs=1, batch_size=10),
                         runs.RunOptions(data=str(tiny_npz), device="cpu", limit=999))
    messages = []

    class Collect(runs.Reporter):
        def message(self, text):
            messages.append(text)
    run.train(Collect())
    assert any("--limit 999 caps nothing" in m and "has 50 examples" in m for m in messages), messages


# ---------------------------------------------------------------------- one process per run
HOLD_LOCK = ("import sys; from cupyvae import runs; lock = runs.RunLock(sys.argv[1]); "
             "print('locked', flush=True); sys.stdin.read()")


def test_a_run_in_use_by_another_process_is_refused_before_any_work(trained, tiny_npz):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(trained)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "locked\n"
        before = {path.name: path.read_bytes() for path in trained.iterdir()}
        in_use = f"{trained} is in use by another cupyvae process (pid {holder.pid})"
        with pytest.raises(runs.RunInUse, match=re.escape(in_use)):
            runs.resume_run(trained, {"epochs": 2})
        with pytest.raises(runs.RunInUse, match=re.escape(in_use)):
            runs.start_run(trained, TINY_MODEL, TrainingOptions(epochs=1, batch_size=10),
                           runs.RunOptions(data=str(tiny_npz), device="cpu"), force=True)
        from click.testing import CliRunner
        result = CliRunner().invoke(main, ["train", "--resume", "--out", str(trained),
                                           "--epochs", "2", "-q"])
        assert result.exit_code == 1 and in_use in result.output, result.output
        assert {path.name: path.read_bytes() for path in trained.iterdir()} == before
    finally:
        holder.kill()      # however a holder dies, the kernel releases its flock
        holder.wait()
    runs.resume_run(trained, {"epochs": 2}).train(runs.Reporter())
    assert runs.load_run(trained, "cpu")[1].history["epoch"] == [1, 2]


def test_the_lock_is_held_from_start_to_the_end_of_training(tiny_npz, tmp_path):
    run = runs.start_run(tmp_path / "run", TINY_MODEL, TrainingOptions(epochs=1, batch_size=10),
                         runs.RunOptions(data=str(tiny_npz), device="cpu"))
    with pytest.raises(runs.RunInUse, match=f"pid {os.getpid()}"):   # flock is per open file
        runs.RunLock(run.folder)
    run.train(runs.Reporter())
    runs.RunLock(run.folder).release()
    assert runs.resume_run(run.folder, {"epochs": 1}) is None        # nothing to train ...
    runs.RunLock(run.folder).release()                                # ... and the lock is free
    with pytest.raises(ValueError, match="missing.npy"):             # a refused start ...
        runs.start_run(run.folder, TINY_MODEL, TrainingOptions(epochs=1, batch_size=10),
                       runs.RunOptions(data=str(tmp_path / "missing.npy"), device="cpu"),
                       force=True)
    runs.RunLock(run.folder).release()                                # ... lets it go too


def test_temporaries_are_removed_only_under_the_lock(tmp_path):
    lock = runs.RunLock(tmp_path)
    in_flight = tmp_path / ".checkpoint.safetensors.abc.tmp"
    in_flight.write_bytes(b"partial")
    lock.release()
    with pytest.raises(RuntimeError, match="needs its lock"):
        runs.remove_stale_temporaries(lock)
    assert in_flight.exists()


def test_a_folder_holding_only_a_lock_file_is_empty(tiny_npz, tmp_path):
    (tmp_path / "run").mkdir()
    runs.RunLock(tmp_path / "run").release()            # what an earlier process leaves
    runs.start_run(tmp_path / "run", TINY_MODEL, TrainingOptions(epochs=1, batch_size=10),
                   runs.RunOptions(data=str(tiny_npz), device="cpu")).train(runs.Reporter())
    assert (tmp_path / "run" / runs.CONFIG_FILE).is_file()


# ---------------------------------------------------------------------- encode
def test_encode_never_leaves_labels_that_are_not_those_of_the_codes(trained, tiny_npz, tmp_path):
    x = np.load(tiny_npz)["x_train"]
    labelled = tmp_path / "labelled.npz"
    np.savez(labelled, x_train=x[:30], y_train=np.arange(30) % 3, x_test=x[30:40],
             y_test=np.arange(10) % 3)
    out = tmp_path / "zz.npy"
    first = runs.encode_run(trained, out, data=str(labelled), device="cpu")
    assert first["labels"] and runs.labels_path(out).is_file() and first["removed"] == []
    second = runs.encode_run(trained, out, data=str(tiny_npz), device="cpu")   # no labels
    assert not second["labels"] and not runs.labels_path(out).exists()
    assert second["removed"] == [str(runs.labels_path(out))]
    assert np.load(out).shape == (60, 2)
