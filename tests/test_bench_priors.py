"""benchmarks/bench_priors.py: the FLOP model it compares timings with, and a shrunk quick run
end to end through make_readme_table.py (skipped without Fashion-MNIST)."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import cupyvae

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_priors", BENCHMARKS / "bench_priors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gemm_flops_count_every_product_of_a_step():
    bench = bench_module()
    b, d, h, z, k = 100, 784, 200, 20, 500
    normal = cupyvae.VAE((28, 28), latent_dim=z, hidden=(h,))
    # encoder: forward and weight gradient on the data layer (the data get no gradient), all
    # three on the second; decoder: all three on both layers.  Two FLOPs per multiply-add.
    expected = 2 * (2 * b * d * h + 3 * b * h * 2 * z + 3 * b * z * h + 3 * b * h * d)
    assert bench.gemm_flops_per_step(normal, b) == expected
    vamp = cupyvae.VAE((28, 28), latent_dim=z, hidden=(h,), prior="vamp", prior_components=k)
    extra = 2 * (3 * k * d * h + 3 * k * h * 2 * z)       # the pseudo-inputs get their gradient
    assert bench.gemm_flops_per_step(vamp, b) == expected + extra
    assert bench.gemm_flops_per_step(vamp, b) / expected == pytest.approx(4.0, abs=0.05)
    mog = cupyvae.VAE((28, 28), latent_dim=z, hidden=(h,), prior="mog", prior_components=10)
    assert bench.gemm_flops_per_step(mog, b) == expected


def test_the_benchmark_runs_end_to_end_and_makes_a_table(tmp_path):
    from cupyvae.datasets import DatasetError, load_dataset
    try:
        load_dataset("fashion-mnist", download=False)
    except DatasetError as exc:
        pytest.skip(f"Fashion-MNIST not installed ({exc})")
    out = tmp_path / "results" / "priors-quick.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_priors.py"), "--quick",
                           "--epochs", "1", "--train-examples", "300", "--test-examples", "20",
                           "--iw-samples", "3", "--vamp-components", "7", "--devices", "cpu",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["benchmark"] == "priors" and result["quick"] and result["iw_samples"] == 3
    rows = {row["prior"]: row for row in result["rows"]}
    assert sorted(rows) == ["mog", "normal", "vamp"]
    assert rows["mog"]["components"] == 10 and rows["vamp"]["components"] == 7
    for row in rows.values():
        assert row["status"] == "ok" and row["device"] == "cpu" and len(row["epoch_seconds"]) == 1
        assert math.isfinite(row["test_log_likelihood"]) and row["active_units"] <= 20
        assert row["seconds_vs_normal"] == pytest.approx(row["seconds_per_epoch"]
                                                         / rows["normal"]["seconds_per_epoch"])
        assert row["log_likelihood_vs_normal"] == pytest.approx(
            row["test_log_likelihood"] - rows["normal"]["test_log_likelihood"], abs=1e-9)
    assert rows["normal"]["log_likelihood_vs_normal"] == 0.0
    table = subprocess.run([sys.executable, str(BENCHMARKS / "make_readme_table.py"), "--results",
                            str(out.parent)], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert "quick smoke run, not a measurement" in table.stdout
    assert "| `vamp` (K = 7) | cpu |" in table.stdout
    assert "importance sampled with 3 samples per test image" in table.stdout
