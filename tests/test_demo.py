import json

import pytest
import torch

from e2etal.cli import main


@pytest.mark.slow
def test_quick_demo_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "head-only" in printed and "LoSA" in printed and "report.json" in printed
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == {"head-only", "LoSA"}
    for m in report["methods"].values():
        assert len(m["mAP"]) == 5 and 0.0 <= m["average_mAP"] <= 1.0
    assert set(report["stages_s"]) >= {"world", "pretrain", "train+eval head-only", "train+eval LoSA", "detect"}
    assert 0.0 <= report["pretrain"]["clip_accuracy"] <= 1.0
    assert (out / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "backbone" / "tiny_vit_pretrained.pth").exists()
    # both methods read one tap cache: the head-only run filled it, LoSA reused it
    assert len(list((out / "tap_cache").iterdir())) == 1
    # the pretrained backbone is an official-layout checkpoint
    state = torch.load(out / "backbone" / "tiny_vit_pretrained.pth", weights_only=True)
    assert "model" in state and "head.weight" in state["model"] and "blocks.0.attn.q_bias" in state["model"]
