import json
import subprocess
import sys

import pytest

from e2etal.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "eval" in capsys.readouterr().out


def test_eval_json_on_shared_files(shared_data, capsys):
    gt = shared_data / "activitynet13" / "activitynet13.json"
    pred = shared_data / "activitynet13" / "sample_detection_prediction.json"
    assert main(["eval", "-g", str(gt), "-p", str(pred), "--dataset", "activitynet", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["average_mAP"] == pytest.approx(0.9988246784907331, abs=1e-9)
    assert len(out["tiou"]) == 10 and len(out["per_class_ap"]) == 200
    assert "dropped 3" in captured.err and "21 repeat" in captured.err
    assert main(["eval", "-g", str(gt), "-p", str(pred), "--subset", "validation", "--keep-duplicates",
                 "--tiou", "0.5,0.75", "--per-class"]) == 0
    table = capsys.readouterr().out
    assert "100.00" in table and "Applying sunscreen" in table


def test_eval_errors_name_file_and_video(tmp_path, capsys):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"database": {"v": {"subset": "test", "duration": 5, "annotations": [
        {"label": "a", "segment": [4, 2]}]}}}))
    assert main(["eval", "-g", str(gt), "-p", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("e2etal eval: error:") and "start 4.0 > end 2.0" in err and "'v'" in err


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "e2etal", "eval", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--keep-duplicates" in out.stdout


def test_eval_on_files_does_not_import_torch(shared_data):
    gt = shared_data / "activitynet13" / "activitynet13.json"
    pred = shared_data / "activitynet13" / "sample_detection_prediction.json"
    code = (
        "import sys\n"
        "from e2etal.cli import main\n"
        f"assert main(['eval', '-g', {str(gt)!r}, '-p', {str(pred)!r}, '--dataset', 'activitynet', '--json']) == 0\n"
        "heavy = sorted(m for m in ('torch', 'matplotlib', 'av') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("heavy: []")
