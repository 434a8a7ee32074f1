"""Every GPU claim of the toolkit, measured by one command within a time budget.

    python benchmarks/gpu_suite.py [--out DIR] [--budget-s 480] [--actionformer DIR]     # on a GPU
    python benchmarks/gpu_suite.py --tiny                           # every step on the CPU, toy sizes

Steps, in order of value; each runs in a process of its own (with --tiny, in this one); a
failure is recorded and the suite goes on, and a step that would start with too little of
the budget left, or outruns it, is recorded as not run or stopped, with every figure
measured until then kept, the step's own included:

  cuda_tests     the tests marked `cuda` (bf16 autocast, SDPA, CUDA memory meters, the
                 LoFi encoder step): `pytest -m cuda`
  bench_losa     `e2etal bench losa` for ViT-g at 768 frames x 224 px and 160 px and ViT-B
                 at 224 px: frozen forward, LoSA, AdaTAD-style, full fine-tuning; targets
                 LoSA peak <= 4 GB and LoSA step <= 1.2 x the frozen forward (ViT-g, 224 px)
  extraction     decode only, backbone only and end to end frames/s for ViT-B and ViT-g at
                 160 and 224 px on a generated 1280x720, 30 fps, 60 s H.264 video; target end
                 to end >= 0.8 x the slower of decoding and the backbone
  head_training  the THUMOS-14 I3D head's training throughput (`train_throughput.py`)
  head_vs_actionformer
                 the head's training step and eval forward in bf16 against ActionFormer's
                 at its THUMOS-14 I3D setting (`head_speed.py --device cuda --bf16`);
                 target at least 1.25x faster. ActionFormer comes from --actionformer
                 (default .cache/actionformer in the repository, ignored by git: a checkout
                 of happyharrycn/actionformer_release); without one only the head's
                 previous version is compared
  lofi_memory    LoFi's peak memory and step time per fidelity, TSM-R50 and ViT-B
                 (`lofi_memory.py`); target: every reduced fidelity below full's memory
  short_runs     a short LoSA run and a short LoFi run on a synthetic world: the training
                 loss goes down and evaluation gives an mAP
  ddp            the same training by one plain process and under torchrun (NCCL, one
                 process per GPU, up to 2; on the CPU 2 gloo processes): the weights agree

Nothing is downloaded: weights are random, videos generated. Writes DIR/gpu_suite.json
(every figure, the device, driver, torch and CUDA versions, the commit) and
DIR/gpu_suite.md (a table to paste into benchmarks/RESULTS.md), and prints the table:
each figure beside its target, pass or fail. The commit is git's, or E2ETAL_COMMIT's where the
copy has no .git. A missing dependency stops the suite before its first step (exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from e2etal import io
from e2etal.machine import describe_cpu

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# (name, seconds it needs at the least to be worth starting: on a GPU, --tiny)
STEPS = [("cuda_tests", 20, 5), ("bench_losa", 90, 10), ("extraction", 90, 10), ("head_training", 40, 5),
         ("head_vs_actionformer", 40, 10), ("lofi_memory", 60, 5), ("short_runs", 60, 10), ("ddp", 30, 10)]
ACTIONFORMER = ROOT / ".cache" / "actionformer"
Emit = Callable[[dict], None]  # takes one figure (`_figure`)
HEAD_TARGET_X = 1.25  # the head at least this many times faster than ActionFormer's
# What the steps import: pyproject's dependencies and test extra by import name (a test
# keeps them equal). Checked before the first step, so that a machine that lacks one (PyAV
# is not in every GPU image) costs seconds, not the budget.
REQUIRED = ("torch", "numpy", "av", "safetensors", "yaml", "tqdm", "matplotlib", "pytest")


def _figure(name: str, value, unit: str = "", target: str | None = None, passed: bool | None = None) -> dict:
    return {"name": name, "value": value, "unit": unit, "target": target, "pass": passed}


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


# ---------------------------------------------------------------------------------------
# Steps: each gives its figures to `emit` as it measures them, so that a step stopped by
# the budget keeps what it had; run in a child process (`--step NAME`).


def step_cuda_tests(tiny: bool, out: Path, timeout: float, emit: Emit) -> None:
    # Only the files that mark a test `cuda`: collecting the whole suite takes longer than
    # running these.
    files = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "tests").glob("test_*.py")
                   if "mark.cuda" in f.read_text(encoding="utf-8"))
    done = _run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *files], timeout)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", summary)}
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    ran = counts.get("passed", 0) + failed
    passed = None if ran == 0 else failed == 0  # all skipped: no CUDA, nothing shown
    emit(_figure("cuda tests passed / failed / skipped", f"{counts.get('passed', 0)} / {failed} / {counts.get('skipped', 0)}",
                 target="all pass", passed=passed))


def step_bench_losa(tiny: bool, out: Path, timeout: float, emit: Emit) -> None:
    from e2etal.benchmark.losa import bench_settings, check_targets, run_bench

    runs = [("tiny", None, None)] if tiny else [("vit-g", 768, 224), ("vit-g", 768, 160), ("vit-b", 768, 224)]
    for backbone, frames, res in runs:
        settings = bench_settings(backbone=backbone if not tiny else "vit-g", frames=frames, res=res, tiny=tiny,
                                  steps=2 if tiny else 5, min_time_s=0.1 if tiny else 1.0)
        label = f"{settings.backbone} {settings.frames}f {settings.res}px"

        def emit_row(row: dict, label: str = label) -> None:
            emit(_figure(f"bench losa {label} {row['method']} peak", row["peak_mem_gb"],
                         "GB" if (row.get("mem_measure") or "").startswith("cuda") else "GB RSS"))
            emit(_figure(f"bench losa {label} {row['method']} step", row["step_s"], "s"))

        rows = run_bench(settings, on_row=emit_row)
        if backbone == "vit-g" and res == 224:
            for check in check_targets(rows):
                emit(_figure(f"bench losa {label}: {check['target']}", check["value"], target=check["target"],
                             passed=check["met"]))


def step_extraction(tiny: bool, out: Path, timeout: float, emit: Emit) -> None:
    sys.path.insert(0, str(HERE))
    import torch
    import video_throughput as vt

    from e2etal.backbones import BACKBONES
    from e2etal.extract import ExtractConfig

    device = ExtractConfig().resolve_device()
    dtype = ExtractConfig().resolve_dtype(device)
    if tiny:
        models, sizes, seconds, width, height, micro = ["tiny-vit"], [32], 3.0, 320, 240, 8
    else:
        models, sizes, seconds, width, height, micro = ["vit-b", "vit-g"], [160, 224], 60.0, 1280, 720, 32
    video = vt.write_test_video(out / "extraction_test.mp4", seconds, fps=30, width=width, height=height)
    constructors = {"tiny-vit": vt.tiny_vit, **BACKBONES}
    for name in models:
        with torch.device(device):
            module = constructors[name]()
        for requested in sizes:
            size = requested // module.patch_size * module.patch_size
            cfg = ExtractConfig(size=size, micro_batch=micro, device=str(device))
            module.eval().to(dtype=dtype)
            backbone = vt.backbone_fps(module, cfg, device, dtype, min_seconds=0.5 if tiny else 3.0, repeats=1)
            decode, _ = vt.decode_fps(video, cfg, pin=device.type == "cuda", repeats=1)
            end_to_end = vt.end_to_end_fps(video, module, cfg, device, repeats=1)
            ratio = end_to_end / min(decode, backbone)
            label = f"extraction {name} {size}px {width}x{height}"
            emit(_figure(f"{label} decode", round(decode, 1), "frames/s"))
            emit(_figure(f"{label} backbone", round(backbone, 1), "frames/s"))
            emit(_figure(f"{label} end to end", round(end_to_end, 1), "frames/s"))
            emit(_figure(f"{label} end to end / slower stage", round(ratio, 3), target=">= 0.8", passed=ratio >= 0.8))
        del module


def step_head_training(tiny: bool, out: Path, timeout: float, emit: Emit) -> None:
    sys.path.insert(0, str(HERE))
    import train_throughput

    sizes = {"videos": 2, "length": 200, "channels": 64, "max_seq_len": 256} if tiny else {"videos": 40}
    r = train_throughput.measure(**sizes)
    emit(_figure("head training THUMOS-14 I3D videos/s", round(r["videos_per_s"], 3), "videos/s"))
    emit(_figure("head training s/step (batch 2)", round(r["s_per_step"], 4), "s"))
    emit(_figure("head training peak memory", round(r["peak_memory_gb"], 2), "GB"))


def step_head_vs_actionformer(tiny: bool, out: Path, timeout: float, emit: Emit, actionformer: Path | None = None) -> None:
    args = ["--tiny", "--repeats", "2", "--device", "cpu"] if tiny else ["--device", "cuda", "--repeats", "7", "--warmup", "2"]
    have_actionformer = actionformer is not None and (actionformer / "libs" / "modeling").is_dir()
    if have_actionformer:
        args += ["--actionformer", str(actionformer)]
    done = _run([sys.executable, str(HERE / "head_speed.py"), "--bf16", *args], timeout)
    result = _json_lines(done.stdout)
    if done.returncode or not result:
        raise RuntimeError(f"head_speed.py failed:\n{done.stderr[-2000:]}")
    r = result[0]
    for what in ("train_step", "eval_forward"):
        for name in ("now", "before", "actionformer"):
            if name in r[what]:
                emit(_figure(f"head bf16 {what} median, {name}", round(r[what][name]["median_s"], 4), "s"))
        for name, x in r["speedup_of_now"][what].items():
            gated = name == "actionformer"
            emit(_figure(f"head bf16 {what}: x faster than {name} (median)", round(x["median_s"], 3),
                         target=f">= {HEAD_TARGET_X}" if gated else None,
                         passed=x["median_s"] >= HEAD_TARGET_X if gated else None))
    if not have_actionformer:
        emit(_figure("head bf16 against ActionFormer: not measured, no checkout given (--actionformer)", None,
                     target=f">= {HEAD_TARGET_X}"))


def step_lofi_memory(tiny: bool, out: Path, timeout: float, emit: Emit) -> None:
    args = (["--backbones", "vit-tiny", "--full", "8", "64", "--batch", "1", "--steps", "1", "--threads", "1"] if tiny
            else ["--backbones", "tsm-r50", "vit-b"])
    done = _run([sys.executable, str(HERE / "lofi_memory.py"), *args], timeout)
    result = _json_lines(done.stdout)
    if done.returncode or not result:
        raise RuntimeError(f"lofi_memory.py failed:\n{done.stderr[-2000:]}")
    for row in result[0]["rows"]:
        label = f"lofi {row['backbone']} {row['fidelity']} ({row['snippets']}x{row['size']}px, batch {row['batch']})"
        reduced = row["fidelity"] != "full"
        x = row.get("x_full")
        emit(_figure(f"{label} peak", None if row.get("peak_gb") is None else round(row["peak_gb"], 3), "GB"))
        emit(_figure(f"{label} step", None if row.get("step_s") is None else round(row["step_s"], 3), "s"))
        if reduced:
            emit(_figure(f"{label} memory / full's", None if x is None else round(x, 3), target="< 1",
                         passed=None if x is None else x < 1))


def step_short_runs(tiny: bool, out: Path, timeout: float, emit: Emit) -> None:
    import csv
    import dataclasses

    from e2etal.demo import METHODS, DemoSettings, run_demo
    from e2etal.synthetic import WorldConfig

    settings = DemoSettings.quick()
    if tiny:
        world = WorldConfig(train_videos=3, val_videos=2, min_video_s=12.0, max_video_s=14.0, max_instances=2)
        settings = dataclasses.replace(settings, world=world, pretrain_clips=16, epochs=3, lofi_epochs=2, lofi_head_epochs=2,
                                       lofi_snippets=8, window_frames=64)
    else:
        settings = dataclasses.replace(settings, epochs=6, lofi_epochs=4, lofi_head_epochs=6)
    for lofi in (False, True):
        folder = out / ("short_lofi" if lofi else "short_losa")
        losa = tuple(m for m in METHODS if m.method == "losa")
        report = run_demo(folder, settings=settings, progress=False, lofi=lofi, methods=losa)
        runs = [folder / "runs" / "LoFi" / "stage2"] if lofi else [folder / "runs" / "LoSA"]
        for run in runs:
            with open(run / "metrics.csv", newline="") as f:
                losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
            name = "LoFi stage 2" if lofi else "LoSA"
            emit(_figure(f"short {name} run: train loss first -> last epoch", f"{losses[0]:.4f} -> {losses[-1]:.4f}",
                         target="goes down", passed=losses[-1] < losses[0]))
        for method, m in report["methods"].items():
            emit(_figure(f"short run {method}: average mAP", round(m["average_mAP"], 4), target="evaluates",
                         passed=0.0 <= m["average_mAP"] <= 1.0))


def step_ddp(tiny: bool, out: Path, timeout: float, emit: Emit) -> None:
    """The feature pipeline trained by one plain process and by torchrun (NCCL on a GPU,
    one process per GPU up to 2; on the CPU, 2 gloo processes), fp32: the weights agree."""
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic_features import make_feature_dataset, tiny_config_overrides

    from e2etal.config import load_config
    from e2etal.experiment import ExperimentConfig, train

    gt, feats = make_feature_dataset(out / "ddp_data", num_train=8, num_val=4, length=(60, 90))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    nproc = min(2, torch.cuda.device_count()) if device == "cuda" else 2
    config = out / "ddp.yaml"
    config.write_text("name: ddp\n")
    runs = {}
    for name in ("single", "torchrun"):
        sets = tiny_config_overrides(gt, feats, out / f"ddp_{name}", epochs=1 if tiny else 3) + [
            "train.batch_size=4", "data.max_seq_len=64", "model.max_seq_len=64", f"train.device={device}",
            "train.amp=false", "train.progress=false"]
        t0 = time.perf_counter()
        if name == "single":  # a plain process: this one
            train(load_config(ExperimentConfig, None, sets))
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
                   "e2etal", "train", str(config), *(f"--set={o}" for o in sets)]
            done = _run(cmd, timeout)
            if done.returncode:
                raise RuntimeError(f"{' '.join(cmd[:8])} ... failed:\n{done.stderr[-2000:]}")
        runs[name] = load_file(str(out / f"ddp_{name}" / "last" / "model.safetensors"))
        procs = f"{nproc} processes" if name == "torchrun" else "1 process"
        emit(_figure(f"ddp {name} run ({procs}, {device}) wall", round(time.perf_counter() - t0, 1), "s"))
    diff = max(float((runs["single"][k].float() - runs["torchrun"][k].float()).abs().max()) for k in runs["single"])
    emit(_figure(f"ddp: max |weight difference|, {nproc} processes vs 1", f"{diff:.2e}", target="<= 1e-4",
                 passed=diff <= 1e-4))


# ---------------------------------------------------------------------------------------
# The driver


def _print_figure(figure: dict) -> None:
    print(json.dumps({"figure": figure}), flush=True)


def run_step_process(cmd: list[str], timeout: float) -> dict:
    """One step's child process, in a process group of its own: {status, figures, seconds,
    detail}. Its figures are the JSON lines it printed before it ended, failed or was
    stopped; a stopped step's group is killed whole, since its own children (the
    benchmark's method processes, torchrun's workers) would hold GPU memory the next
    step needs."""
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            status = "ok" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "stopped"
            os.killpg(proc.pid, signal.SIGKILL)
            try:
                stdout, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired as e:  # a descendant that left the group holds the pipe
                stdout, stderr = e.output or "", ""
                stdout = stdout.decode(errors="replace") if isinstance(stdout, bytes) else stdout
    step = {"status": status, "figures": [line["figure"] for line in _json_lines(stdout) if "figure" in line],
            "seconds": round(time.perf_counter() - t0, 1)}
    if status == "failed":
        step["detail"] = (stderr or stdout)[-3000:]
    elif status == "stopped":
        step["detail"] = f"the budget ran out after {step['seconds']:.0f} s"
    return step


def _missing_modules() -> list[str]:
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError as e:  # absent, or present and broken (a wheel for another platform)
            missing.append(f"{name} ({e})")
    return missing


def _environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "machine": describe_cpu(), "device": "cpu", "driver": None}
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            env["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            pass
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                                       timeout=10).stdout.strip() or None
    except OSError:
        env["commit"] = None
    # A copy of the working tree without its .git (as on a lent machine) is named by the caller.
    env["commit"] = env["commit"] or os.environ.get("E2ETAL_COMMIT") or None
    return env


def _markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"GPU suite, {report['date']}, {env['device']} (driver {env['driver']}), torch {env['torch']}, "
             f"CUDA {env['cuda']}, commit {str(env.get('commit'))[:12]}; `{report['command']}`", "",
             "| step | figure | value | target | result |", "|---|---|---|---|---|"]
    if report["tiny"]:  # what a toy run shows is that every step runs, not the claims
        lines[1:1] = ["", "Toy sizes on the CPU (--tiny): every step runs; no figure here is a measurement of a claim."]
    for step in report["steps"]:
        if step["status"] != "ok":
            lines.append(f"| {step['name']} | - | {step['status']}: {step.get('detail', '')[:120]} | | |")
        for f in step.get("figures", []):
            result = "" if f["pass"] is None else ("pass" if f["pass"] else "FAIL")
            value = f"{f['value']} {f['unit']}".strip() if f["value"] is not None else "-"
            lines.append(f"| {step['name']} | {f['name']} | {value} | {f['target'] or ''} | {result} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu-suite", help="output folder (default: gpu-suite)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="seconds for the whole suite (default 480)")
    ap.add_argument("--tiny", action="store_true", help="every step on the CPU at toy sizes (the tests run this)")
    ap.add_argument("--steps", nargs="+", choices=[s for s, _, _ in STEPS], help="run only these steps")
    ap.add_argument("--actionformer", type=Path, default=ACTIONFORMER,
                    help=f"a checkout of happyharrycn/actionformer_release for head_vs_actionformer (default {ACTIONFORMER})")
    ap.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    args = ap.parse_args()
    extra = {"head_vs_actionformer": {"actionformer": args.actionformer.resolve()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # toy sizes on the CPU, even on a GPU machine

    if args.step:  # child: one step, each figure a JSON line as soon as it is measured
        globals()[f"step_{args.step}"](args.tiny, out, args.budget_s, _print_figure, **extra.get(args.step, {}))
        return 0
    missing = _missing_modules()
    if missing:
        print(f"gpu_suite.py: cannot run, missing Python packages: {'; '.join(missing)}. Install the toolkit "
              "with its dependencies (pip install -e '.[test]'), or see benchmarks/RESULTS.md for a machine "
              "without a package index", file=sys.stderr)
        return 2

    began = time.perf_counter()
    report = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", "benchmarks/gpu_suite.py", *sys.argv[1:]]),
              "budget_s": args.budget_s, "tiny": args.tiny, "environment": _environment(), "steps": []}
    for name, need_gpu_s, need_tiny_s in STEPS:
        if args.steps and name not in args.steps:
            continue
        left = args.budget_s - (time.perf_counter() - began)
        need = need_tiny_s if args.tiny else need_gpu_s
        step = {"name": name}
        if left < max(need, 1):
            step.update(status="not run", detail=f"{left:.0f} s of the budget left, the step needs about {need} s")
        elif args.tiny:  # toy sizes: in this process, where a child would spend seconds importing torch again
            t0 = time.perf_counter()
            figures = []
            try:
                globals()[f"step_{name}"](True, out, left, figures.append, **extra.get(name, {}))
                step.update(status="ok", figures=figures)
            except Exception:  # a failed step is recorded, with what it measured, and the suite goes on
                step.update(status="failed", figures=figures, detail=traceback.format_exc()[-3000:])
            step["seconds"] = round(time.perf_counter() - t0, 1)
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--out", str(out),
                   "--budget-s", str(left), "--actionformer", str(args.actionformer)]
            step.update(run_step_process(cmd, left))
        report["steps"].append(step)
        print(f"{name}: {step['status']} ({step.get('seconds', 0):.0f} s)", file=sys.stderr)
        io.write_json(out / "gpu_suite.json", report)  # kept after every step
    report["seconds"] = round(time.perf_counter() - began, 1)
    io.write_json(out / "gpu_suite.json", report)
    io.write_text(out / "gpu_suite.md", _markdown(report))
    print(_markdown(report))
    return 0 if all(s["status"] == "ok" for s in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
