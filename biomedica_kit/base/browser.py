"""Which Chromium to drive: kaleido (chart images), the browser tests and Label Studio's UI test
all use one, Debian's by default (scripts/ensure_chromium.sh installs it; nothing downloads a
browser of its own)."""

from __future__ import annotations

import os
import shutil

__all__ = ["DEFAULT_CHROMIUM", "chromium_path"]

#: Chromium as Debian installs it.
DEFAULT_CHROMIUM = "/usr/bin/chromium"


def chromium_path() -> str | None:
    """The Chrome/Chromium to drive: $BROWSER_PATH, else Debian's, else one on PATH."""
    for cand in (os.environ.get("BROWSER_PATH"), DEFAULT_CHROMIUM):
        if cand and os.access(cand, os.X_OK):
            return cand
    return shutil.which("chromium") or shutil.which("chromium-browser") \
        or shutil.which("google-chrome")
