"""The GPU suite runs every step at toy sizes on the CPU, so it cannot rot between the
times a GPU is lent."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
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


def test_a_missing_dependency_stops_the_suite_before_its_first_step(tmp_path):
    # a PyAV that fails to import, as on a GPU image without it
    (tmp_path / "av").mkdir()
    (tmp_path / "av" / "__init__.py").write_text("raise ImportError('no PyAV here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(SUITE), "--tiny", "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 2
    assert "missing Python packages: av (no PyAV here)" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "gpu_suite.json").exists()


def _suite_module():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # killed, not yet reaped by init


def _child_code(pid_file: Path, then: str) -> str:
    return (
        "import json, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('a line that is not a figure')\n"
        "print(json.dumps({'figure': {'name': 'measured first', 'value': 1.5}}), flush=True)\n"
        f"{then}\n")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_step_stopped_by_the_budget_keeps_its_figures_and_its_process_group_is_killed(tmp_path):
    suite = _suite_module()
    step = suite.run_step_process([sys.executable, "-c", _child_code(tmp_path / "pid", "time.sleep(120)")], timeout=3)
    assert step["status"] == "stopped" and "budget ran out" in step["detail"]
    assert step["figures"] == [{"name": "measured first", "value": 1.5}]
    grandchild = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 10
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(grandchild), "the step's own child outlived it"


def test_a_step_that_fails_keeps_the_figures_it_measured(tmp_path):
    suite = _suite_module()
    code = _child_code(tmp_path / "pid", "child.kill(); raise RuntimeError('the second measurement broke')")
    step = suite.run_step_process([sys.executable, "-c", code], timeout=60)
    assert step["status"] == "failed" and "the second measurement broke" in step["detail"]
    assert step["figures"] == [{"name": "measured first", "value": 1.5}]


def test_the_dependency_check_names_every_package_pyproject_asks_for():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((SUITE.parents[1] / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    import_names = {"pyyaml": "yaml"}  # distribution name -> import name, where they differ
    names = {re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower() for spec in wanted}
    assert set(_suite_module().REQUIRED) == {import_names.get(n, n) for n in names}
