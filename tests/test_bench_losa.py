import argparse
import json

import pytest
import torch

from e2etal.benchmark import (
    METHODS,
    AdaptedBlock,
    TemporalAdapter,
    bench_losa,
    bench_settings,
    build_bench_vit,
    check_targets,
    format_table,
)
from e2etal.cli import bench_cmd


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_rows(rows: list[dict]) -> None:
    assert [r["method"] for r in rows] == list(METHODS)
    by = {r["method"]: r for r in rows}
    backbone = _count(build_bench_vit("tiny"))
    for r in rows:
        assert r["status"] == "ok" and r["step_s"] > 0 and r["params"]["backbone"] == backbone
    frozen, losa, adatad, full = (by[m] for m in METHODS)

    assert frozen["trainable_params"] == 0 and frozen["x_frozen"] == 1.0
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


def test_bench_losa_tiny_on_cpu():
    rows = bench_losa(tiny=True, steps=1, warmup=0, device="cpu")
    _check_rows(rows)
    assert all(r["peak_mem_gb"] is None for r in rows)  # measured on CUDA only
    table = format_table(rows)
    assert all(m in table for m in METHODS) and "n/a" in table
    checks = check_targets(rows)
    assert [c["met"] for c in checks][0] is None  # peak memory not measured on CPU


def test_bench_cli_tiny_json(capsys):
    parser = argparse.ArgumentParser(prog="e2etal")
    bench_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "losa", "--tiny", "--json", "--device", "cpu", "--steps", "1", "--warmup", "0"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["torch"] == torch.__version__ and out["device"].startswith("cpu")
    assert out["settings"]["backbone"] == "tiny" and out["settings"]["tokens"] == 32 and out["settings"]["dtype"] == "fp32"
    assert out["targets"] == []
    _check_rows(out["rows"])


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
    s = bench_settings(backbone="vit-g", device="cpu")
    assert (s.num_clips, s.tokens, s.width, s.depth, s.dtype) == (48, 384, 1408, 40, "fp32")


def test_targets_and_table_of_an_oom_row():
    rows = [
        {"method": "frozen", "status": "ok", "peak_mem_gb": 2.5, "step_s": 0.5, "x_frozen": 1.0,
         "trainable_params": 0, "notes": ""},
        {"method": "losa", "status": "ok", "peak_mem_gb": 3.0, "step_s": 0.65, "x_frozen": 1.3,
         "trainable_params": 21_000_000, "notes": ""},
        {"method": "full", "status": "OOM", "peak_mem_gb": None, "step_s": None, "x_frozen": None,
         "trainable_params": None, "notes": "out of CUDA memory"},
    ]
    assert [c["met"] for c in check_targets(rows)] == [True, False]
    table = format_table(rows).splitlines()
    assert "OOM" in table[3] and "21.00M" in table[2]
    rows[1].update(status="OOM", peak_mem_gb=None, step_s=None, x_frozen=None)
    assert [c["met"] for c in check_targets(rows)] == [False, False]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="peak memory is measured on CUDA only")
def test_bench_losa_memory_order_on_cuda():
    rows = bench_losa(backbone="vit-b", frames=256, res=224, steps=2, warmup=1, device="cuda")
    by = {r["method"]: r for r in rows}
    assert all(r["status"] == "ok" for r in rows), [r["notes"] for r in rows]
    assert by["losa"]["peak_mem_gb"] < by["adatad"]["peak_mem_gb"] < by["full"]["peak_mem_gb"]
    assert by["losa"]["backbone_params_with_grad"] == 0 and by["adatad"]["grad_through_backbone"]
