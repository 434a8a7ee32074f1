"""The machine a figure was measured on, named so that figures from two machines are not
compared as if they were one: the demo's work takes nearly twice as long on one 2-core
CPU as on another (research/README.md). No torch import, so `e2etal eval` stays light."""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_cpu() -> str:
    """e.g. "Intel(R) Xeon(R) Processor (x86_64), 2 cores"."""
    return f"{cpu_name()} ({platform.machine()}), {os.cpu_count()} cores"
