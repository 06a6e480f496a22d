"""The GPU benchmark harness, exercised without a GPU: the scripts refuse clearly where no
GPU is present, their emulator smoke modes run end to end and write the JSON that
make_readme_table.py turns into Markdown, and the one-command suite plans its parts within
its time budget and keeps going after a failing part."""
import argparse
import importlib.util
import json
import os
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
def first_look(tmp_path_factory):
    """benchmarks/gpu_first_look.py --dry-run: on this GPU-less machine it runs the GPU-test
    part (all skip, JUnit written) and the benchmarks' emulator smoke runs end to end, and
    skips and lists the sanitizer parts.  Its benchmark JSON feeds the smoke tests below."""
    out = tmp_path_factory.mktemp("first-look")
    done = script("gpu_first_look.py", out, "--dry-run", timeout=400)
    return out, done


@pytest.fixture(scope="module")
def smoke_results(first_look):
    out, done = first_look
    return out, done, done


def test_first_look_dry_run_runs_end_to_end_in_at_most_eight_files(first_look):
    out, done = first_look
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and set(files) <= set(summary["files"]), files
    assert {"summary.json", "first-look.log", "gpu-tests.xml", "gpu-kernels.json",
            "gpu-train.json", "gpu-train.png"} == set(files)
    parts = {p["name"]: p for p in summary["parts"]}
    assert list(parts) == ["gpu-tests", "bench-kernels", "bench-train", "memcheck", "racecheck"]
    for name in ("gpu-tests", "bench-kernels", "bench-train"):
        assert parts[name]["status"] == "ok", parts[name]
    assert "--device emulated" in parts["bench-kernels"]["command"]
    assert "--skip-compile" in parts["bench-train"]["command"]
    for name in ("memcheck", "racecheck"):   # listed, with the reason
        assert parts[name]["status"] == "skipped: needs a GPU (--dry-run)"
    assert summary["skipped"] == ["memcheck: needs a GPU (--dry-run)",
                                  "racecheck: needs a GPU (--dry-run)"]
    assert summary["dry_run"] is True and summary["all_ok"] is True
    assert "synthetic" in summary["dataset"] and summary["kernel_checks"] == "all ok"
    environment = summary["environment"]
    assert environment["python"] and "compute_sanitizer_found" in environment
    log = (out / "first-look.log").read_text()
    assert all(f"=== {name} ===" in log for name in ["environment", *parts])
    assert "<testsuite" in (out / "gpu-tests.xml").read_text()


def _first_look_module():
    return module("gpu_first_look")


def test_first_look_survives_a_failing_a_crashing_and_a_hanging_part(tmp_path, monkeypatch):
    """Parts that fail, crash and hang are recorded as such; every other part still runs and
    writes its results."""
    fl = _first_look_module()
    python = sys.executable
    parts = (
        fl.Part("failing", (python, "-c", "import sys; print('two failed'); sys.exit(1)"), 20, 0),
        fl.Part("crashing", (python, "-c", "import os; os.abort()"), 20, 0),
        fl.Part("hanging", (python, "-c", "import time; time.sleep(60)"), 6, 0),
        fl.Part("writing", (python, "-c", "import pathlib, sys; "
                            "pathlib.Path(sys.argv[1], 'gpu-kernels.json').write_text('[]')",
                            "{out}"), 20, 0),
    )
    monkeypatch.setattr(fl, "describe_environment", lambda env: ({"python": "x"}, "described"))
    summary = fl.run_parts(parts, tmp_path, budget=60, dry_run=False)
    status = {p["name"]: p["status"] for p in summary["parts"]}
    assert status["failing"] == "failed (exit 1)"
    assert status["crashing"].startswith("failed (exit -")          # killed by SIGABRT
    assert status["hanging"] == "timeout after 6 s"
    assert status["writing"] == "ok" and (tmp_path / "gpu-kernels.json").exists()
    assert summary["all_ok"] is False
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert [p["name"] for p in saved["parts"]] == ["failing", "crashing", "hanging", "writing"]
    assert "two failed" in (tmp_path / "first-look.log").read_text()
    assert saved["kernel_checks"] == "no readable kernel result"     # '[]' is no result


def test_first_look_finds_a_sanitizer_from_a_pip_wheel(tmp_path, monkeypatch):
    """Not on PATH, no CUDA toolkit: absent, and the message says how to install it; then
    a wheel's nvidia/<cuda>/bin/compute-sanitizer on sys.path is found."""
    fl = _first_look_module()
    if os.access("/usr/local/cuda/bin/compute-sanitizer", os.X_OK):
        pytest.skip("this machine has a CUDA toolkit's compute-sanitizer")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no-cuda"))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(fl.sys, "path", [str(tmp_path / "site")])
    path, how = fl.find_sanitizer()
    assert path is None and "pip install nvidia-cuda-sanitizer-api" in how
    wheel_bin = tmp_path / "site" / "nvidia" / "cu13" / "bin"
    wheel_bin.mkdir(parents=True)
    (wheel_bin / "compute-sanitizer").write_text("#!/bin/sh\n")
    (wheel_bin / "compute-sanitizer").chmod(0o755)
    assert fl.find_sanitizer() == (str(wheel_bin / "compute-sanitizer"),
                                   "from a pip wheel (nvidia-cuda-sanitizer-api)")


def test_sanitizer_summaries_are_counted():
    fl = _first_look_module()
    text = ("========= ERROR SUMMARY: 0 errors\n"
            "========= RACECHECK SUMMARY: 3 hazards displayed (3 errors, 0 warnings)\n")
    assert fl.sanitizer_findings(text) == {"errors": 0, "hazards": 3}
    assert fl.sanitizer_findings("no sanitizer here") == {}


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
    # The emulator records instead of capturing: said so, never passed off as CUDA graphs.
    assert row["cupyvae_graphs_captured"] is False
    assert ours["cupyvae-graph-50"]["method"].startswith("emulator recordings")
    assert ours["cupyvae-eager"]["method"].startswith("eager")
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
                     "linear_forward (single pass)", "linear_backward", "adam_update"}
    assert all(row["check"] == "ok" and row["seconds"] > 0 for row in result["rows"])
    # Every timing says how it ran; the emulator's are never "captured", and never compared.
    assert all(row["captured"] is False and "method" in row for row in result["rows"])
    assert not any("time_vs_cublas" in row for row in result["rows"])
    # The tiny (3, 600, 5) forward splits K; its single-pass twin does not.
    split = {row["kernel"]: row["splits"] for row in result["rows"] if "(3, 600, 5)" in row["shape"]}
    assert split["linear_forward"][0] > 1 and split["linear_forward (single pass)"] == [1]
    assert all(row["pct_of_peak"] is None for row in result["rows"] if "gb_per_s" in row), \
        "no L2 size on the emulator: no working set is known to exceed it"


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
