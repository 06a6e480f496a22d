"""The GPU benchmark harness, exercised without a GPU: the scripts refuse clearly where no
GPU is present, their emulator smoke modes run end to end and write the JSON that
make_readme_table.py turns into Markdown, and the one-command suite plans its parts within
its time budget and keeps going after a failing part."""
import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cuda_available

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
no_gpu_only = pytest.mark.skipif(cuda_available(), reason="checks the behaviour without a GPU")


def script(name, *args, timeout=300):
    return subprocess.run([sys.executable, str(BENCH / name), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def module(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod          # dataclasses look their module up while being defined
    spec.loader.exec_module(mod)
    return mod


def has_torch():
    return importlib.util.find_spec("torch") is not None


@no_gpu_only
@pytest.mark.parametrize("name", ["bench_train_gpu.py", "bench_kernels.py"])
def test_gpu_benchmarks_fail_fast_without_a_gpu(name):
    start = time.perf_counter()
    done = script(name, timeout=60)
    assert done.returncode != 0
    assert "no CUDA GPU" in done.stderr, done.stderr
    assert time.perf_counter() - start < 30, "must not import torch or load data first"


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    """The training and kernel benchmarks' emulator smoke runs, in one results folder."""
    out = tmp_path_factory.mktemp("results")
    train = script("bench_train_gpu.py", "--device", "emulated", "--tiny", "--epochs", "1",
                   "--out", out / "gpu-train.json", *([] if has_torch() else ["--no-torch"]))
    kernels = script("bench_kernels.py", "--device", "emulated", "--tiny",
                     "--out", out / "gpu-kernels.json")
    return out, train, kernels


def test_training_benchmark_runs_on_the_emulator(smoke_results):
    out, train, _ = smoke_results
    assert train.returncode == 0, train.stdout + train.stderr
    result = json.loads((out / "gpu-train.json").read_text())
    assert result["benchmark"] == "train_gpu" and result["device"] == "emulated"
    assert "synthetic" in result["dataset"]
    (row,) = result["rows"]
    assert row["model"] == "784-16-2" and row["steps_per_epoch"] == 4
    ours = {k: r for k, r in row["results"].items() if k.startswith("cupyvae")}
    assert set(ours) == {"cupyvae-eager", "cupyvae-graph-1", "cupyvae-graph-50", "cupyvae-graph-epoch"}
    assert row["cupyvae_variants_agree"], f"eager and every graph size must agree: {ours}"
    assert all(row["seconds_per_epoch"][k] > 0 for k in ours)
    if has_torch():
        assert row["seconds_per_epoch"]["torch-eager"] > 0
        assert row["results"]["torch-compile-max-autotune"]["status"].startswith("skipped")
    assert (out / "gpu-train.png").stat().st_size > 0


def test_kernel_benchmark_checks_every_kernel_on_the_emulator(smoke_results):
    out, _, kernels = smoke_results
    assert kernels.returncode == 0, kernels.stdout + kernels.stderr
    result = json.loads((out / "gpu-kernels.json").read_text())
    names = {row["kernel"] for row in result["rows"]}
    assert names == {"bernoulli_nll", "gaussian_likelihood_nll", "linear_forward",
                     "linear_backward_input", "linear_backward_weight", "adam_update"}
    assert all(row["check"] == "ok" and row["seconds"] > 0 for row in result["rows"])


def test_readme_table_names_machine_versions_and_command(smoke_results):
    out, _, _ = smoke_results
    (out / "summary.json").write_text(json.dumps({"suite": "gpu", "parts": []}))  # ignored
    done = script("make_readme_table.py", "--results", out)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.count("####") == 2
    assert "| 784-16-2 | 32 |" in text and "`adam_update`" in text
    assert "python benchmarks/bench_train_gpu.py --device emulated --tiny" in text
    assert "NumPy" in text and "emulator smoke run" in text


def test_kernel_check_reports_the_worst_element():
    bench = module("bench_kernels")
    assert bench.check("y", [1.0, 2.0], [1.0, 2.0], 0.0) is None
    message = bench.check("y", [1.0, 2.5, float("nan")], [1.0, 2.0, 3.0], 0.1)
    assert message.startswith("y: 2 of 3 beyond tolerance") and "want 3" in message


def test_a_failing_compile_child_is_recorded_not_fatal():
    bench = module("bench_train_gpu")
    args = argparse.Namespace(epochs=1, dataset="fashion-mnist")
    result = bench.time_torch_compiled_in_child(bench.Case((3,), 2, 4), "reduce-overhead", args, 60)
    assert result["status"].startswith("error (exit 1)"), result


def test_suite_plans_every_part_within_its_budget(tmp_path):
    done = script("run_gpu_suite.py", tmp_path, "--dry-run", "--budget", "470")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    parts = {p["name"]: p for p in summary["parts"]}
    assert list(parts) == ["nvidia-smi", "install", "gpu-tests", "all-tests", "bench-kernels",
                           "bench-train"]
    assert "pip install --no-deps --no-build-isolation -e ." in parts["install"]["command"]
    gpu_tests = f"-m pytest -m gpu -q -p no:cacheprovider --junitxml={tmp_path}/gpu-tests.xml"
    assert gpu_tests in parts["gpu-tests"]["command"]
    assert f"--out {tmp_path}/gpu-train.json" in parts["bench-train"]["command"]
    suite = module("run_gpu_suite")
    deadline = time.monotonic() + 470
    timeouts = [suite.part_timeout(i, suite.PARTS, deadline) for i in range(len(suite.PARTS))]
    # Every part may be cut, but later parts always keep their floor.
    assert timeouts[-2] >= suite.PARTS[-2].floor_s and timeouts[-1] >= suite.PARTS[-1].floor_s
    late = time.monotonic() + 200        # what the benchmarks get when the tests ran long
    assert suite.part_timeout(4, suite.PARTS, late) <= 200 - suite.PARTS[5].floor_s + 1


@no_gpu_only
def test_suite_keeps_going_after_a_failing_part(tmp_path):
    done = script("run_gpu_suite.py", tmp_path, "--parts", "nvidia-smi,bench-kernels,bench-train",
                  "--budget", "200", timeout=120)
    assert done.returncode == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [p["name"] for p in summary["parts"]] == ["nvidia-smi", "bench-kernels", "bench-train"]
    for part in summary["parts"][1:]:
        assert part["status"] == "failed" and part["exit_status"] == 1, part
        assert "no CUDA GPU" in (tmp_path / part["log"]).read_text()
    assert summary["all_ok"] is False
