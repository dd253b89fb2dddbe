"""The search page in headless Chromium against the real server: a person types a query, sets
a filter, sees the grid (thumbnails, captions, licence badges, article links), opens a result
(full caption, inline references), asks for more like it, and drops an image. Screenshots are
kept in build/test-artifacts/; every request stays on the server's own address."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
from browser import ARTIFACTS, browser_page, hosts
from search_server import search_dataset, search_server


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    return search_server(tmp_path_factory)


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> list[dict]:
    ds = search_dataset(tmp_path_factory)
    return pq.read_table(ds / "metadata" / "figures.parquet",
                         columns=["key", "caption", "pmcid", "image_ext", "image_sha256"]
                         ).to_pylist()


def _cards(page) -> list[dict]:
    return page.eval_on_selector_all(".card", """cs => cs.map(c => ({
        key: c.dataset.key,
        caption: c.querySelector('.cap').textContent,
        badge: c.querySelector('.badge').textContent,
        link: c.querySelector('.meta a').href,
        loaded: c.querySelector('img').complete && c.querySelector('img').naturalWidth > 0}))""")


def test_text_search_filters_detail_and_more_like_this(url, figures, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = next(r for r in figures if r["pmcid"] and "pathway" in (r["caption"] or ""))
    words = " ".join(target["caption"].split()[:12])
    with browser_page() as (page, urls):
        page.goto(f"{url}/")
        page.wait_for_function("document.querySelector('#label').options.length > 1")
        page.fill("#q", words)
        page.click("#go")
        page.wait_for_selector(".card")
        page.wait_for_function("[...document.querySelectorAll('.card img')]"
                               ".every(i => i.complete)")
        cards = _cards(page)
        assert target["key"] in [c["key"] for c in cards[:3]]
        assert all(c["loaded"] for c in cards), "a thumbnail did not load"
        assert all(c["caption"] and c["badge"] for c in cards)
        assert any("pmc.ncbi.nlm.nih.gov/articles/PMC" in c["link"] for c in cards)
        assert "results 1–12" in page.text_content("#status")
        page.screenshot(path=str(ARTIFACTS / "search-grid.png"), full_page=False)

        # A filter narrows the grid to that licence.
        page.select_option("#license", "noncommercial")
        page.wait_for_function("document.querySelector('#status').textContent"
                               ".includes('results 1–6')")
        assert {c["badge"] for c in _cards(page)} <= {"cc-by-nc", "cc-by-nc-nd"}
        page.select_option("#license", "")
        page.wait_for_function("document.querySelectorAll('.card').length == 12")

        # Open the target: full caption, inline references, then more like this.
        page.click(f".card[data-key='{target['key']}']")
        page.wait_for_selector("#detail[open]")
        page.wait_for_function("!document.querySelector('#d-refs').textContent"
                               ".includes('loading')")
        assert page.text_content("#d-caption") == target["caption"]
        page.wait_for_function("document.querySelector('#d-image').naturalWidth > 0")
        page.screenshot(path=str(ARTIFACTS / "search-detail.png"))
        page.click("#more")
        page.wait_for_function("document.querySelector('#status').textContent"
                               ".startsWith('More like')")
        similar = [c["key"] for c in _cards(page)]
        assert len(similar) == 12 and target["key"] not in similar
    assert hosts(urls) == {url.split("/")[2]}


def test_dropping_an_image_finds_it_first(url, figures, tmp_path):
    shas = [r["image_sha256"] for r in figures]
    target = [r for r in figures if shas.count(r["image_sha256"]) == 1][len(figures) // 3]
    img = requests.get(f"{url}/samples/{target['key']}/image", timeout=60).content
    path = Path(tmp_path) / f"query.{target['image_ext']}"
    path.write_bytes(img)
    with browser_page() as (page, urls):
        page.goto(f"{url}/")
        page.wait_for_selector("#drop:not([hidden])")
        page.set_input_files("#file", str(path))
        page.wait_for_function("document.querySelector('#status').textContent"
                               ".startsWith('Image')", timeout=120_000)
        page.wait_for_selector(".card")
        cards = _cards(page)
        assert cards[0]["key"] == target["key"]
        page.wait_for_function("[...document.querySelectorAll('.card img')]"
                               ".every(i => i.complete)")
        page.screenshot(path=str(ARTIFACTS / "search-image.png"))
    assert hosts(urls) == {url.split("/")[2]}
