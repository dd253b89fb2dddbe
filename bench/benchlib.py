"""What every benchmark prints first: the machine and its load, and where it works."""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

__all__ = ["machine", "start"]


def machine() -> str:
    """Cores, Python, OS and architecture of this machine, and its load average now."""
    return (f"{os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}, load average {os.getloadavg()[0]:.1f}")


def start(workdir: str | None, prefix: str) -> Path:
    """The work folder (``workdir``, else a new temporary one), after printing the machine."""
    work = Path(workdir or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# {machine()} at start; work in {work}", flush=True)
    return work
