"""What the numbers were measured on: CPU, cores, Python, platform, package versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

__all__ = ["machine_info"]

PACKAGES = (
    "keystile", "starlette", "fastapi", "uvicorn", "h11", "httptools", "uvloop", "anyio",
    "cachetools", "httpx", "fastapi-key-auth", "keyshield", "aiocache", "argon2-cffi",
    "django", "djangorestframework", "djangorestframework-api-key", "matplotlib", "redis",
    "hiredis",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _wrk_version() -> str | None:
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "?"


def _git() -> dict[str, Any] | None:
    """The checkout the harness runs from (the code measured), when it is one."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if shutil.which("git") is None or not os.path.isdir(os.path.join(root, ".git")):
        return None
    run = ["git", "-C", root]
    head = subprocess.run([*run, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*run, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def machine_info() -> dict[str, Any]:
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(),
        "usable_cores": len(affinity) if affinity is not None else None,
        "python": sys.version.split()[0], "implementation": platform.python_implementation(),
        "platform": platform.platform(), "versions": _versions(), "wrk": _wrk_version(),
        "git": _git(),
    }
