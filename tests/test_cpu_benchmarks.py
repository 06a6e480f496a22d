"""The CPU benchmark harness without running a measurement: the README table shows what a
run measured and flags what is doubtful, and the old fresh-model results are refused."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def table(results: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "make_readme_table.py"), "--results",
                           str(results)], capture_output=True, text=True, timeout=60)


def side(threads, seconds, loss):
    steady = seconds[1:]
    median = sorted(steady)[len(steady) // 2]
    return {"threads": threads, "epoch_seconds": seconds, "final_train_loss": loss,
            "steady": {"median": median, "min": min(steady), "max": max(steady),
                       "noisy": (max(steady) - min(steady)) / median > 0.25}}


def test_the_cpu_table_shows_medians_spreads_threads_and_flags(tmp_path):
    row = {"model": "784-200-2", "batch": 100, "epochs": 4, "threads": 1,
           "cupyvae": side(1, [1.3, 1.2, 1.25, 1.9], 270.1),
           "torch_default_threads": side(2, [1.1, 1.0, 1.05, 1.02], 271.0),
           "torch_same_threads": side(1, [1.7, 1.6, 1.65, 1.62], 270.3),
           "ratio_vs_torch_default_threads": 1.25 / 1.02, "ratio_vs_torch_same_threads": 1.25 / 1.62,
           "loss_gap_vs_torch_default_threads": -0.9, "loss_gap_vs_torch_same_threads": -0.2,
           "losses_agree": False, "noisy": True}
    result = {"benchmark": "train_cpu", "quick": False, "cpu": "Some CPU", "cores": 2,
              "numpy": "2.0", "torch": "2.13.0", "cupyvae": "0.1.0", "date": "2026-01-01",
              "dataset": "fashion-mnist (60000 train)", "rows": [row]}
    (tmp_path / "cpu.json").write_text(json.dumps(result))
    done = table(tmp_path)
    assert done.returncode == 0, done.stderr
    line = next(text for text in done.stdout.splitlines() if text.startswith("| 784-200-2"))
    assert "1.25 [1.20-1.90] (1 thr)" in line and "(2 thr)" in line
    assert "noisy" in line and "final losses differ by 0.90 nats" in line
    assert "1.23" in line and "0.77" in line            # both ratios
    assert "median over epochs 2 and later" in done.stdout and "Some CPU, 2 cores" in done.stdout


def test_the_old_fresh_model_results_are_refused(tmp_path):
    old = {"benchmark": "train_cpu", "rows": [{"model": "784-200-2", "batch": 100,
                                               "cupyvae_numpy_s_per_epoch": 1.39}]}
    (tmp_path / "cpu.json").write_text(json.dumps(old))
    done = table(tmp_path)
    assert "rerun the benchmark" in done.stderr
    assert "784-200-2" not in done.stdout
