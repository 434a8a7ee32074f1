"""The GPU suite runs every step at toy sizes on the CPU, so it cannot rot between the
times a GPU is lent."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


@pytest.mark.slow
def test_the_tiny_suite_runs_every_step_and_writes_its_tables(tmp_path):
    done = subprocess.run([sys.executable, str(SUITE), "--tiny", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=900)
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["cuda_tests", "bench_losa", "extraction", "head_training", "head_vs_actionformer",
                           "lofi_memory", "short_runs", "ddp"]
    failed = {name: s.get("detail", "")[-800:] for name, s in steps.items() if s["status"] != "ok"}
    assert not failed and done.returncode == 0, failed
    assert all(s["figures"] for s in steps.values())
    env = report["environment"]
    assert {"device", "driver", "torch", "cuda", "commit"} <= set(env)
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "| extraction |" in table and ">= 0.8" in table and "| short_runs |" in table
    # the data-parallel run gives the single process's weights
    assert [f["pass"] for f in steps["ddp"]["figures"] if f["target"]] == [True]


def test_a_step_left_without_budget_is_recorded_not_run(tmp_path):
    done = subprocess.run([sys.executable, str(SUITE), "--tiny", "--out", str(tmp_path), "--budget-s", "0.5",
                           "--steps", "bench_losa"], capture_output=True, text=True, timeout=120)
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["steps"] == [{"name": "bench_losa", "status": "not run",
                                "detail": report["steps"][0]["detail"]}]
    assert "of the budget left" in report["steps"][0]["detail"] and done.returncode == 1
