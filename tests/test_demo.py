import json

import pytest
import torch

from e2etal.cli import main
from e2etal.demo import METHODS, DemoSettings, train_method
from e2etal.experiment import experiment_config
from e2etal.machine import describe_cpu


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
    # the CPU is named, in the report and in the printed total: the time depends on it
    assert report["settings"]["machine"] == describe_cpu() and describe_cpu() in printed
    assert (out / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "backbone" / "tiny_vit_pretrained.pth").exists()
    # both methods read one tap cache: the head-only run filled it, LoSA reused it
    assert len(list((out / "tap_cache").iterdir())) == 1
    # the pretrained backbone is an official-layout checkpoint
    state = torch.load(out / "backbone" / "tiny_vit_pretrained.pth", weights_only=True)
    assert "model" in state and "head.weight" in state["model"] and "blocks.0.attn.q_bias" in state["model"]
    # pretrained on the horizontal glides only; TAL has all four glides
    assert report["pretrain"]["classes"] == ["move_left", "move_right"] and "move_left, move_right" in printed
    assert state["model"]["head.weight"].shape[0] == 2
    database = json.loads((out / "world" / "annotations.json").read_text())["database"]
    labels = {a["label"] for v in database.values() for a in v["annotations"]}
    assert labels <= {"move_left", "move_right", "move_up", "move_down"} and labels & {"move_up", "move_down"}
    # another training seed on the same world, backbone and tap cache (research/demo_seeds.py --train-seeds)
    again = train_method(out, DemoSettings.quick(), METHODS[1], train_seed=7, device=torch.device("cpu"),
                         progress=False, run_name="LoSA-train7")
    assert again["checkpoint"] == str(out / "runs" / "LoSA-train7" / "last") and 0.0 <= again["average_mAP"] <= 1.0
    assert experiment_config(again["checkpoint"]).train.seed == 7
    assert len(list((out / "tap_cache").iterdir())) == 1


def test_mirror_flip_relabels_directional_classes():
    from e2etal.synthetic import CLASS_NAMES, mirror_flip, mirror_label_ids

    k = CLASS_NAMES.index("spin_counterclockwise")  # a world up to spin_clockwise, without its mirror class
    mirror = torch.tensor(mirror_label_ids(k))
    names = CLASS_NAMES[:k]
    assert names[mirror[names.index("move_left")]] == "move_right"
    assert names[mirror[names.index("move_right")]] == "move_left"
    assert names[mirror[names.index("move_up")]] == "move_up"  # a vertical glide is its own mirror image
    assert names[mirror[names.index("approach")]] == "approach"
    assert mirror[names.index("spin_clockwise")] == -1
    full = mirror_label_ids(len(CLASS_NAMES))
    assert full[CLASS_NAMES.index("spin_clockwise")] == CLASS_NAMES.index("spin_counterclockwise")

    labels = torch.arange(k).repeat(20)
    clips = torch.randint(0, 256, (len(labels), 2, 4, 6, 3), dtype=torch.uint8)
    out, new = mirror_flip(clips, labels, mirror, torch.Generator().manual_seed(0))
    flipped = (out != clips).flatten(1).any(1)
    assert 0 < int(flipped.sum()) < len(labels)  # about half
    assert torch.equal(out[flipped], clips[flipped].flip(-2))
    assert torch.equal(new[flipped], mirror[labels[flipped]])
    assert torch.equal(new[~flipped], labels[~flipped])
    assert not flipped[labels == names.index("spin_clockwise")].any()  # no mirror class: never flipped


def test_demo_settings_check_pretrain_classes_when_built():
    from e2etal.demo import DemoSettings

    settings = DemoSettings()
    assert settings.pretrain_world.class_names == ("move_left", "move_right")
    assert settings.losa_taps == (2, 4, 6)
    assert DemoSettings(pretrain_classes=None).pretrain_world == settings.world
    with pytest.raises(ValueError, match="pretrain_classes"):
        DemoSettings(pretrain_classes=settings.world.num_classes + 1)


@pytest.mark.slow
def test_quick_lofi_demo_compares_the_encoders(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--method", "lofi", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "untouched" in printed and "LoFi" in printed
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == {"untouched", "LoFi"}
    assert (out / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    lofi = json.loads((out / "runs" / "LoFi" / "report.json").read_text())
    assert lofi["schedule"].startswith("long_c: 16 snippets x 32 px")  # S: the world's 64 px halved
    assert (out / "runs" / "LoFi" / "stage2" / "encoder.safetensors").exists()
