"""Headless Debian Chromium for the browser tests, driven by playwright (never a downloaded
browser), with every host name but 127.0.0.1 unresolvable so nothing can leave loopback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from biomedica_kit.base.browser import chromium_path

ROOT = Path(__file__).resolve().parents[1]
#: Where browser tests keep their screenshots (build/ is ignored by git).
ARTIFACTS = ROOT / "build" / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


@contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[tuple[Any, list[str]]]:
    """``(page, requested URLs)`` of a fresh headless Chromium with its own profile."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    assert path, "no Chromium: run scripts/ensure_chromium.sh (make test does)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            urls: list[str] = []
            page.on("request", lambda r: urls.append(r.url))
            yield page, urls
        finally:
            browser.close()


def hosts(urls: list[str]) -> set[str]:
    """The host:port of every http(s) URL requested."""
    return {u.split("/")[2] for u in urls if u.startswith(("http://", "https://"))}
