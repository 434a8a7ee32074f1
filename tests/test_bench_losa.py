import argparse
import json
import os
from dataclasses import replace

import pytest
import torch

from e2etal.adapters.adatad import AdaptedBlock, TemporalAdapter
from e2etal.benchmark import (
    METHODS,
    bench_losa,
    bench_settings,
    build_bench_vit,
    check_targets,
    format_table,
    run_bench,
)
from e2etal.cli import bench_cmd


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_rows(rows: list[dict], steps: int, min_time_s: float) -> None:
    assert [r["method"] for r in rows] == list(METHODS)
    by = {r["method"]: r for r in rows}
    backbone = _count(build_bench_vit("tiny"))
    for r in rows:
        assert r["status"] == "ok" and r["params"]["backbone"] == backbone
        # at least `steps` timed steps, and more until they add up to min_time_s
        assert len(r["step_times_s"]) >= steps and sum(r["step_times_s"]) >= min_time_s
        assert len(r["step_times_s"]) == steps or sum(r["step_times_s"][:-1]) < min_time_s
        assert 0 < r["step_min_s"] <= r["step_s"] <= r["step_max_s"]
        assert (r["step_min_s"], r["step_max_s"]) == (min(r["step_times_s"]), max(r["step_times_s"]))
    frozen, losa, adatad, full = (by[m] for m in METHODS)

    assert frozen["trainable_params"] == 0 and frozen["x_frozen"] == 1.0 and frozen["x_frozen_min"] == 1.0
    assert losa["trainable_params"] == losa["params"]["adapters"] + losa["params"]["head"]
    assert losa["params"]["adapters"] > 0 and losa["params"]["head"] > 0
    assert adatad["trainable_params"] == adatad["params"]["adapters"] + adatad["params"]["head"]
    assert adatad["params"]["adapters"] > 0 and adatad["params"]["head"] == losa["params"]["head"]
    assert full["trainable_params"] == backbone + full["params"]["head"]

    # LoSA never differentiates the backbone; AdaTAD-style does (to reach its adapters),
    # without updating it; full fine-tuning trains it.
    assert losa["backbone_params_with_grad"] == 0 and not losa["grad_through_backbone"]
    assert adatad["backbone_params_with_grad"] == 0 and adatad["grad_through_backbone"]
    assert full["backbone_params_with_grad"] > 0 and full["grad_through_backbone"]
    for r in rows:
        assert r["x_frozen"] == pytest.approx(r["step_s"] / frozen["step_s"])
        assert r["x_frozen_min"] == pytest.approx(r["step_min_s"] / frozen["step_min_s"])


def _check_cpu_processes(rows: list[dict]) -> None:
    """Each method measured in a process of its own, not this one, at 1 intra-op thread,
    its peak RSS positive and above the RSS before its model was built."""
    pids = [r["pid"] for r in rows]
    assert len(set(pids)) == len(rows) and os.getpid() not in pids
    for r in rows:
        assert r["mem_measure"] == "cpu peak RSS" and r["threads"] == 1
        assert 0 < r["base_mem_gb"] < r["peak_mem_gb"]


STEPS, MIN_TIME_S = 2, 0.3


@pytest.fixture(scope="module")
def tiny_rows() -> list[dict]:
    return bench_losa(tiny=True, steps=STEPS, min_time_s=MIN_TIME_S, warmup=0, device="cpu")


def test_bench_losa_tiny_on_cpu(tiny_rows):
    _check_rows(tiny_rows, STEPS, MIN_TIME_S)
    _check_cpu_processes(tiny_rows)
    checks = check_targets(tiny_rows)
    assert checks[0]["met"] is None and checks[0]["value"] is None  # a CPU RSS says nothing of the CUDA target
    assert checks[1]["value"] == tiny_rows[1]["x_frozen"]


def test_table_shows_memory_and_step_spread(tiny_rows):
    header, *body, legend = format_table(tiny_rows).splitlines()
    for column in ("peak GB", "base GB", "own GB", "min s", "median s", "max s", "x frozen", "x min", "pid"):
        assert column in header
    assert [line.split()[0] for line in body] == list(METHODS)
    for line, r in zip(body, tiny_rows):
        peak, base, own, low, median, high = (float(v) for v in line.split()[1:7])
        assert peak == pytest.approx(r["peak_mem_gb"], abs=1e-3) and own == pytest.approx(peak - base, abs=2e-3)
        assert low <= median <= high and str(r["pid"]) in line
    assert legend.startswith("memory: cpu peak RSS")


def test_bench_cli_tiny_json(capsys):
    parser = argparse.ArgumentParser(prog="e2etal")
    bench_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "losa", "--tiny", "--json", "--device", "cpu", "--steps", "1", "--warmup", "0",
                              "--min-time", "0"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["torch"] == torch.__version__ and out["device"].startswith("cpu")
    assert out["settings"]["backbone"] == "tiny" and out["settings"]["tokens"] == 32 and out["settings"]["dtype"] == "fp32"
    assert out["settings"]["threads"] == 1 and out["settings"]["min_time_s"] == 0
    assert out["targets"] == []
    _check_rows(out["rows"], 1, 0)
    _check_cpu_processes(out["rows"])


def test_two_tiny_runs_agree():
    """The LoSA / frozen ratio (medians) of two default runs, one after the other, within a factor of 5.

    On 2 loaded cores, one thread per method and at least 1 s of timed steps keep two
    runs within about 2.3x of each other; a pool as wide as the machine puts about one
    pair in three 9x to 70x apart."""
    ratios = [bench_losa(tiny=True, methods=("frozen", "losa"), device="cpu")[1]["x_frozen"] for _ in range(2)]
    assert max(ratios) / min(ratios) < 5, ratios


def test_a_failing_method_names_itself():
    s = replace(bench_settings(tiny=True, methods=("frozen",), device="cpu"), micro_batch=0)  # unchecked: range step 0
    with pytest.raises(RuntimeError, match=r"(?s)frozen failed in its process \(pid \d+\):.*ValueError"):
        run_bench(s)


def test_temporal_adapter_crosses_clips_and_starts_at_zero():
    torch.manual_seed(0)
    t, hw, dim = 4, 3, 8
    adapter = TemporalAdapter(dim, clip_tokens=t, reduction=1)
    block = build_bench_vit("tiny").blocks[0]
    x = torch.randn(2, t * hw, 64)  # [N, t*h*w, D] of the tiny ViT
    assert torch.equal(AdaptedBlock(block, TemporalAdapter(64, t)).eval()(x), block.eval()(x))

    # down = up = identity and a kernel that reads the previous time step: each spatial
    # token gets GELU of the same token one step earlier, across the clip boundary.
    with torch.no_grad():
        for linear in (adapter.down, adapter.up):
            linear.weight.copy_(torch.eye(dim))
            linear.bias.zero_()
        adapter.conv.weight.zero_()
        adapter.conv.weight[:, 0, 0] = 1.0
        adapter.conv.bias.zero_()
    x = torch.randn(2, t * hw, dim)  # 2 clips
    y = adapter(x).view(2 * t, hw, dim)  # [N*t, h*w, D]
    seq = x.view(2 * t, hw, dim)
    assert torch.allclose(y[1:], torch.nn.functional.gelu(seq[:-1]), atol=1e-6)
    assert torch.allclose(y[t], torch.nn.functional.gelu(seq[t - 1]), atol=1e-6)  # clip 1 sees clip 0
    assert torch.equal(y[0], torch.zeros(hw, dim))


def test_bench_settings_errors():
    with pytest.raises(ValueError, match="methods"):
        bench_settings(methods=("losa", "lora"), device="cpu")
    with pytest.raises(ValueError, match="patch of 14 px; try 154 or 168"):
        bench_settings(backbone="vit-g", res=160, device="cpu")
    with pytest.raises(ValueError, match="multiple of clip_frames"):
        bench_settings(backbone="vit-b", frames=100, device="cpu")
    with pytest.raises(ValueError, match="unknown backbone"):
        bench_settings(backbone="vit-x", device="cpu")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        bench_settings(tiny=True, threads=0, device="cpu")
    with pytest.raises(ValueError, match="min_time_s must be >= 0"):
        bench_settings(tiny=True, min_time_s=-1, device="cpu")
    s = bench_settings(backbone="vit-g", device="cpu")
    assert (s.num_clips, s.tokens, s.width, s.depth, s.dtype) == (48, 384, 1408, 40, "fp32")


def _cuda_row(method: str, peak_gb: float, step_s: float, x_frozen: float, trainable: int) -> dict:
    return {"method": method, "status": "ok", "peak_mem_gb": peak_gb, "base_mem_gb": 0.0,
            "mem_measure": "cuda max_memory_allocated", "step_s": step_s, "step_min_s": step_s * 0.9,
            "step_max_s": step_s * 1.1, "x_frozen": x_frozen, "x_frozen_min": x_frozen, "trainable_params": trainable,
            "pid": 4321, "notes": ""}


def test_targets_and_table_of_an_oom_row():
    rows = [
        _cuda_row("frozen", 2.5, 0.5, 1.0, 0),
        _cuda_row("losa", 3.0, 0.65, 1.3, 21_000_000),
        {"method": "full", "status": "OOM", "peak_mem_gb": None, "base_mem_gb": 0.0,
         "mem_measure": "cuda max_memory_allocated", "step_s": None, "step_min_s": None, "step_max_s": None,
         "x_frozen": None, "x_frozen_min": None, "trainable_params": None, "pid": 4322, "notes": "out of CUDA memory"},
    ]
    assert [c["met"] for c in check_targets(rows)] == [True, False]
    table = format_table(rows).splitlines()
    assert "OOM" in table[3] and "21.00M" in table[2] and "0.5850" in table[2]  # the min step
    assert table[4].startswith("memory: cuda max_memory_allocated")
    rows[1].update(mem_measure="cpu peak RSS")  # a CPU RSS is no measure of the CUDA target
    assert [c["met"] for c in check_targets(rows)] == [None, False]
    rows[1].update(status="OOM", peak_mem_gb=None, step_s=None, x_frozen=None)
    assert [c["met"] for c in check_targets(rows)] == [False, False]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_losa_memory_order_on_cuda():
    initialised = torch.cuda.is_initialized()
    rows = bench_losa(backbone="vit-b", frames=256, res=224, steps=2, warmup=1, device="cuda")
    assert torch.cuda.is_initialized() == initialised  # CUDA ran in the methods' processes only
    by = {r["method"]: r for r in rows}
    assert all(r["status"] == "ok" for r in rows), [r["notes"] for r in rows]
    assert all(r["mem_measure"] == "cuda max_memory_allocated" for r in rows)
    assert len({r["pid"] for r in rows}) == len(rows)
    assert by["losa"]["peak_mem_gb"] < by["adatad"]["peak_mem_gb"] < by["full"]["peak_mem_gb"]
    assert by["losa"]["backbone_params_with_grad"] == 0 and by["adatad"]["grad_through_backbone"]
