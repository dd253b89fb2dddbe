"""Label Studio's own UI in headless Chromium (Debian's, driven by playwright): a review task
shows its montage and the proposal pre-filled in the Taxonomy (label-studio #970), and all
119 secondary labels of the taxonomy are there to choose. Screenshots are kept under
build/test-artifacts/."""

from __future__ import annotations

from browser import ARTIFACTS, browser_page, hosts
from PIL import Image

from biomedica_kit.cluster.run import run_dir
from biomedica_kit.labels.proposals import proposal_rows
from biomedica_kit.labels.taxonomy import load_taxonomy
from curation import server
from curation.push import push

_TREE_SCAN = """(() => {
  const nodes = Array.from(document.querySelectorAll('.ant-select-tree-treenode'));
  return nodes.map(n => [n.querySelector('.ant-select-tree-title')?.innerText ?? null,
                         n.querySelectorAll('.ant-select-tree-indent-unit').length]);
})()"""
_SCROLL = """(() => { const h = document.querySelector('.ant-select-tree-list-holder');
  const before = h.scrollTop; h.scrollTop = before + 150; return h.scrollTop !== before; })()"""


def test_a_review_task_shows_the_montage_and_the_prefilled_proposal(studio, review_copy):
    ds, run = review_copy
    s = push(ds, run, studio.admin, files_root=studio.files_root)
    props = {p["cluster"]: p for p in proposal_rows(ds, run)}
    cluster = max(props, key=lambda c: props[c]["score"])
    p = props[cluster]
    task = next(t for t in studio.admin.tasks(s.project)
                if t["data"]["ref"] == f"cluster/{cluster}")
    with Image.open(run_dir(ds, run) / "montages" / f"{cluster}.jpg") as im:
        montage_width = im.size[0]
    admin = server.admin_credentials(studio.home)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with browser_page(1400, 1100) as (page, urls):
        page.goto(f"{studio.info.url}/user/login/")
        page.fill("input[name=email]", admin.email)
        page.fill("input[name=password]", admin.password)
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        page.goto(f"{studio.info.url}/projects/{s.project}/data?task={task['id']}")
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('.lsf-image img'))"
            ".some(i => i.complete && i.naturalWidth > 0)", timeout=120_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "labelstudio-review-task.png"))
        shown = page.evaluate("Array.from(document.querySelectorAll('.lsf-image img'))"
                              ".map(i => i.naturalWidth)")
        assert montage_width in shown  # the montage itself, drawn by the Image tag
        selected = page.inner_text(".lsf-taxonomy")
        assert f"{p['primary_label']} / {p['secondary_label']}" in selected
        checked = page.evaluate("Array.from(document.querySelectorAll("
                                "'input[type=radio]:checked')).map(i => (i.closest('label')"
                                " || i.parentElement).innerText)")
        assert any(c.strip().startswith(p["panel_type"]) for c in checked), checked
        assert any("/data/local-files/" in u and "montage" in u for u in urls)

        # Every secondary label is in the Taxonomy's tree (antd renders it virtually:
        # expand every primary, scroll, collect).
        page.click(".htx-taxonomy .ant-select-selector")
        page.wait_for_selector(".ant-select-tree-title", timeout=10_000)
        seen: set[tuple[str, int]] = set()
        for _ in range(200):
            closed = page.query_selector_all(".ant-select-tree-switcher_close")
            if closed:
                closed[0].click()
                page.wait_for_timeout(50)
                continue
            seen |= {(t, d) for t, d in page.evaluate(_TREE_SCAN) if t}
            if not page.evaluate(_SCROLL):
                break
            page.wait_for_timeout(50)
        page.screenshot(path=str(ARTIFACTS / "labelstudio-taxonomy-open.png"))
    tax = load_taxonomy()
    assert {t for t, d in seen if d == 1} == {lab.secondary for lab in tax.labels}
    assert {t for t, d in seen if d == 0} == set(tax.tree)
    assert len({t for t, d in seen if d == 1}) == 119
    assert hosts(urls) == {studio.info.url.split("/")[2]}
