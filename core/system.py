"""What machine the platform runs on (no torch import: the dashboard reads this)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from typing import Any

import psutil


def machine_info() -> dict[str, Any]:
    mem = psutil.virtual_memory()
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "memory_total": mem.total,
        "memory_available": mem.available,
        "python": platform.python_version(),
        "gpus": _gpus(),
    }
    return info


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs as nvidia-smi reports them ([] when there is none)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory_total": int(parts[1]) * 2**20, "memory_used": int(parts[2]) * 2**20})
    return gpus
