"""Benchmarks of the claims in DESIGN.md (memory, speed), behind `e2etal bench`."""

from e2etal.benchmark.losa import (
    BACKBONES,
    METHODS,
    TARGET_PEAK_GB,
    TARGET_X_FROZEN,
    BenchSettings,
    bench_losa,
    bench_settings,
    build_bench_vit,
    check_targets,
    format_table,
    run_bench,
)

__all__ = [
    "BACKBONES",
    "METHODS",
    "TARGET_PEAK_GB",
    "TARGET_X_FROZEN",
    "BenchSettings",
    "bench_losa",
    "bench_settings",
    "build_bench_vit",
    "check_targets",
    "format_table",
    "run_bench",
]
