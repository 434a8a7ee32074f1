"""`e2etal lofi CONFIG`: LoFi's stage 2, stage 3 and the comparison with the untouched encoder."""

from __future__ import annotations

import sys

from e2etal.cli import add_config_options, command_help, config_overrides


def register(sub) -> None:
    p = sub.add_parser(
        "lofi",
        help=command_help("lofi"),
        description="Run LoFi (Xu et al., NeurIPS 2021) from a `method: lofi` config (configs/lofi_*.yaml): "
        "stage 2 trains the video encoder and a head through the TAL loss on snippets at reduced fidelity "
        "(the config's lofi.schedule); stage 3 extracts full-fidelity snippet features with the trained "
        "encoder and with the untouched one, and trains the same head recipe (lofi.head_train) on each. "
        "Prints both mAP tables; everything, and report.json, goes to the config's out_dir. Run it again to "
        "resume: finished stages are skipped, an interrupted one continues from its last checkpoint. Under "
        "torchrun (torchrun --nproc_per_node N -m e2etal lofi CONFIG) every stage runs data-parallel.",
    )
    p.add_argument("config", help="YAML config with method: lofi")
    add_config_options(p)
    p.add_argument("--memory-budget", metavar="SIZE", help="e.g. 16GB: on a GPU, measure one training step per "
                   "candidate fidelity and train at the highest fidelity, then the largest batch, that fits; on a "
                   "CPU it cannot be measured and the config's schedule is kept")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from e2etal import distributed
    from e2etal.config import load_config
    from e2etal.engine.trainer import resolve_device
    from e2etal.experiment import ExperimentConfig
    from e2etal.lofi.budget import parse_gb
    from e2etal.lofi.stages import fit_to_budget, run_lofi
    from e2etal.pipelines.lofi import LoFiPipeline

    overrides = config_overrides(args) + (["train.progress=false"] if args.no_progress else [])
    cfg = load_config(ExperimentConfig, args.config, overrides)
    if not isinstance(cfg.pipeline, LoFiPipeline):
        raise ValueError(f"{args.config}: e2etal lofi runs a `method: lofi` config; this one has method {cfg.method!r} "
                         "(use e2etal train)")
    distributed.init(resolve_device(cfg.train.device, "--device" if args.device else "train.device"))
    main = distributed.is_main()
    if args.memory_budget:
        # Every rank measures its own GPU; all train with rank 0's choice.
        cfg, table = distributed.broadcast_object(fit_to_budget(cfg, parse_gb(args.memory_budget)))
        if main:
            print(table, file=sys.stderr)
    if main:
        print(f"stage 2 fidelity schedule: {cfg.pipeline.schedule(cfg).describe()}", file=sys.stderr)
    report = run_lofi(cfg, progress=not args.no_progress)
    if not main:
        return 0
    print(report.table())
    skipped = f" (skipped, already complete: {', '.join(report.skipped)})" if report.skipped else ""
    print(f"LoFi - untouched: {100 * (report.lofi.average_mAP - report.base.average_mAP):+.2f} points of average mAP; "
          f"report: {report.out_dir / 'report.json'}{skipped}")
    return 0
