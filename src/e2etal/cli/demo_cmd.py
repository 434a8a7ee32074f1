"""`e2etal demo`: synthetic world -> pretrained tiny backbone -> head-only vs LoSA (or LoFi) -> detect."""

from __future__ import annotations

from e2etal.cli import command_help


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help=command_help("demo"),
        description="Generate synthetic untrimmed videos with exact ground truth, pretrain a tiny video ViT on "
        "trimmed clips, train and evaluate head-only transfer and LoSA on the untrimmed videos (or, with --method "
        "lofi, train the ViT itself with LoFi and compare heads on its features and the untouched ViT's), run "
        "detection on a held-out video and draw its timeline. Everything lands in --out, figures in report.json.",
    )
    p.add_argument("--out", default="e2etal-demo", help="output folder (default: e2etal-demo)")
    p.add_argument("--method", choices=("losa", "lofi"), default="losa",
                   help="losa (default; 6-10 minutes on 2 CPU cores, depending on the CPU): head-only transfer against "
                   "LoSA beside the frozen ViT; lofi (6-9 minutes): the ViT trained with LoFi, its features against "
                   "the untouched ViT's")
    p.add_argument("--quick", action="store_true", help="a much smaller run (about a minute), for smoke tests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, ...")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from e2etal.demo import format_table, run_demo
    from e2etal.engine.trainer import resolve_device
    from e2etal.io import output_dir

    resolve_device(args.device, "--device")
    output_dir(args.out, "--out")

    report = run_demo(args.out, quick=args.quick, seed=args.seed, device=args.device, progress=not args.no_progress,
                      lofi=args.method == "lofi")
    print()
    print(format_table(report))
    if "lofi" in report:
        print("(the same head on full-fidelity features of the untouched ViT and of the ViT trained with LoFi)")
    print()
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in report["stages_s"].items())
    pretrain = report["pretrain"]
    print(f"pretrained backbone: clip accuracy {100 * pretrain['clip_accuracy']:.1f}% on "
          f"{', '.join(pretrain['classes'])} (chance {100 / len(pretrain['classes']):.0f}%)")
    settings = report["settings"]
    print(f"stages: {stages}; total {report['total_s']:.0f} s on {settings['device']} "
          f"({settings['machine']}, {settings['threads']} threads)")
    print(f"timeline of {report['detect']['video']} ({report['detect']['method']}): {report['detect']['timeline']}")
    print(f"report: {args.out}/report.json")
    return 0
