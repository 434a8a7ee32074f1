"""`e2etal train CONFIG`: train a detector from a YAML config."""

from __future__ import annotations

from e2etal.cli import add_config_options, command_help, config_overrides
from e2etal.config import load_config


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help=command_help("train"),
        description="Train a detector from a YAML config (see configs/): the ActionFormer-style head on "
        "pre-extracted features (method: features), or end to end on raw video beside a frozen backbone "
        "(method: losa, LoSA adapters; method: head_only, head-only transfer), or the encoder itself on raw video "
        "at low fidelity (method: lofi, LoFi's stage 2; `e2etal lofi` runs all of LoFi). Checkpoints (last/, best/), "
        "metrics.csv and TensorBoard logs go to the config's out_dir; --resume continues a stopped run. "
        "Under torchrun (torchrun --nproc_per_node N -m e2etal train CONFIG) it trains data-parallel; "
        "train.batch_size is then the global batch.",
    )
    p.add_argument("config", help="YAML config (see configs/)")
    add_config_options(p)
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint directory, e.g. OUT_DIR/last")
    p.set_defaults(func=run)


def run(args) -> int:
    from e2etal import distributed
    from e2etal.experiment import ExperimentConfig, train

    cfg = load_config(ExperimentConfig, args.config, config_overrides(args))
    result = train(cfg, resume=args.resume)
    best = f", best average mAP {100 * result.best_metric:.2f} at epoch {result.best_epoch}" if result.best_metric is not None else ""
    if result.epochs_run == 0:
        ran = f"nothing to train: {args.resume} had finished all {result.epochs_done} epochs"
    elif result.first_epoch > 1:
        ran = (f"resumed after epoch {result.first_epoch - 1} and trained epochs {result.first_epoch}-{result.epochs_done} "
               f"({result.epochs_run}) in {result.seconds:.1f} s")
    else:
        ran = f"trained {result.epochs_run} epochs in {result.seconds:.1f} s"
    if distributed.is_main():
        print(f"{ran}{best}; checkpoints in {result.out_dir}")
    return 0
