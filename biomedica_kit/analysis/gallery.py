"""Gallery cards as HTML: a sample's image (read from its shard by byte offset and
thumbnailed; click to zoom), figure label, kind, size, licence, the article with links to PMC
and the DOI, caption, the inline references that cite the figure, and its curation state.

:func:`gallery_html` pages through many cards without JavaScript (radio buttons and CSS), so
static report pages page and zoom too; the live widgets (:mod:`biomedica_kit.analysis.explore`)
reuse :func:`card_html` for their cards.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_kit.analysis.charts import LICENCE_COLORS
from biomedica_kit.tables.samples import read_member

if TYPE_CHECKING:
    from biomedica_kit.analysis.curation import TagStore

__all__ = [
    "DOI_URL", "EMPTY_DATASET", "GALLERY_CSS", "PMC_URL", "THUMB_SIDE", "ZOOM_SIDE",
    "article_links", "card_html", "gallery_html", "read_image", "sample_thumbnail", "thumbnail",
]

#: Longer side of a card's thumbnail (static pages zoom into it, so it is larger than shown).
THUMB_SIDE = 480
#: Longer side of the image the live detail pane shows.
ZOOM_SIDE = 1600
EMPTY_DATASET = ("This dataset has no samples yet: nothing to explore. Build or subset into "
                 "it, or open another dataset.")
PMC_URL = "https://pmc.ncbi.nlm.nih.gov/articles/{}/"
DOI_URL = "https://doi.org/{}"


# ---------------------------------------------------------------------------------- images


def read_image(dataset: str | os.PathLike, row: dict[str, Any]) -> bytes:
    """A sample's image bytes, read from its shard at the offset ``figures.parquet`` records
    (:func:`biomedica_kit.tables.samples.read_member`)."""
    return read_member(dataset, row, "image")


def thumbnail(data: bytes, side: int = THUMB_SIDE) -> tuple[str, str]:
    """``(mime, base64)`` of a JPEG at most ``side`` pixels on its longer side.

    Why: stored images can be 4096 px; inlining them whole would make a gallery page (and the
    notebook) tens of megabytes.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as src:
        src.draft("RGB", (side, side))  # JPEG: decode at a reduced scale (much faster)
        src.thumbnail((side, side), reducing_gap=2.0)
        im: Image.Image = src if src.mode in ("RGB", "L") else src.convert("RGB")
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
    return "image/jpeg", base64.b64encode(buf.getvalue()).decode("ascii")


@lru_cache(maxsize=256)
def _cached_thumbnail(path: str, offset: int, length: int, side: int) -> tuple[str, str]:
    row = {"key": path, "shard": path, "image_offset": offset, "image_length": length}
    return thumbnail(read_image("/", row), side)


def sample_thumbnail(dataset: str | os.PathLike, row: dict[str, Any],
                     side: int = THUMB_SIDE) -> tuple[str, str]:
    """:func:`thumbnail` of a sample's image, cached by shard, offset and size (a redraw, or
    the snapshot after the live cards, does not decode the same image again)."""
    path = str((Path(dataset) / row["shard"]).resolve())
    return _cached_thumbnail(path, int(row["image_offset"]), int(row["image_length"]), side)


# --------------------------------------------------------------------------------- gallery

GALLERY_CSS = """<style>
.bk-gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px;
  font:13px/1.4 system-ui,sans-serif}
.bk-card{border:1px solid #d8dde6;border-radius:6px;padding:8px;background:#fff;color:#1d2330}
.bk-card img.bk-thumb{width:100%;height:220px;object-fit:contain;background:#f4f6fa;
  cursor:zoom-in;display:block}
.bk-zoom>summary{list-style:none;outline:none}
.bk-zoom>summary::-webkit-details-marker{display:none}
.bk-zoom[open]>summary{position:fixed;inset:0;z-index:10000;background:rgba(20,24,33,.88);
  display:flex;align-items:center;justify-content:center;cursor:zoom-out}
.bk-zoom[open]>summary img.bk-thumb{width:auto;height:auto;max-width:94vw;max-height:94vh;
  min-width:min(60vw,640px);object-fit:contain;background:#fff;cursor:zoom-out}
.bk-meta{color:#4a5366;margin:4px 0}
.bk-meta a{color:#3d5a98}
.bk-lic{display:inline-block;padding:0 6px;border-radius:8px;color:#fff;font-size:11px}
.bk-kind{display:inline-block;padding:0 6px;border-radius:8px;background:#e3e6ec;font-size:11px}
.bk-dec-accept{border-color:#2a9d8f;box-shadow:0 0 0 2px #2a9d8f55}
.bk-dec-reject{border-color:#c8553d;box-shadow:0 0 0 2px #c8553d55;opacity:.75}
.bk-cap{margin:4px 0}
.bk-card details.bk-more{margin-top:4px} .bk-card summary{cursor:pointer;color:#3d5a98}
.bk-card mark{background:#fff1a8}
.bk-card ol{padding-left:18px;margin:4px 0}
.bk-head{font:14px system-ui,sans-serif;margin:6px 0}
.bk-empty{font:14px system-ui,sans-serif;color:#4a5366;padding:12px;background:#f4f6fa;
  border-radius:6px}
.bk-pages>input{display:none}
.bk-pager{font:13px system-ui,sans-serif;margin:6px 0}
.bk-pager label{display:inline-block;padding:1px 8px;margin-right:4px;border:1px solid #d8dde6;
  border-radius:4px;cursor:pointer}
.bk-page{display:none}
</style>"""


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1].rstrip() + "…"


def _highlight(paragraph: str, sentences: Sequence[str]) -> str:
    """The paragraph, escaped, with the sentences that cite the figure marked."""
    out = html.escape(paragraph)
    for s in sorted({s for s in sentences if s}, key=len, reverse=True):
        esc = html.escape(s)
        out = out.replace(esc, f"<mark>{esc}</mark>", 1)
    return out


def article_links(row: dict[str, Any]) -> str:
    """Links to the article: PMC (by PMCID) and the DOI, escaped; the key when neither."""
    e = html.escape
    links = []
    if row.get("pmcid"):
        links.append(f'<a href="{e(PMC_URL.format(row["pmcid"]))}" target="_blank" '
                     f'rel="noopener">{e(row["pmcid"])}</a>')
    if row.get("doi"):
        links.append(f'<a href="{e(DOI_URL.format(row["doi"]))}" target="_blank" '
                     f'rel="noopener">doi:{e(row["doi"])}</a>')
    return " · ".join(links)


def card_html(dataset: str | os.PathLike, row: dict[str, Any], *, decision: str | None = None,
              tags: Sequence[str] = (), note: str | None = None,
              side: int = THUMB_SIDE) -> str:
    """One gallery card: thumbnail (click to zoom), figure label, kind, size, licence, article
    with links, caption, inline references, and the sample's curation state."""
    e = html.escape
    try:
        mime, b64 = sample_thumbnail(dataset, row, side)
        img = (f'<details class="bk-zoom"><summary title="click to zoom">'
               f'<img class="bk-thumb" src="data:{mime};base64,{b64}" '
               f'alt="{e(row.get("figure_label") or row["key"])}"></summary></details>')
    except (OSError, ValueError) as exc:  # unreadable image: say so on the card
        img = f'<div class="bk-meta">image unavailable: {e(str(exc))}</div>'
    lic = row.get("license_category") or "unknown"
    color = LICENCE_COLORS.get(lic, "#555")
    kind = (f' <span class="bk-kind">{e(row["figure_kind"])}</span>'
            if row.get("figure_kind") else "")
    size = (f" · {row['image_width']}×{row['image_height']} px"
            if row.get("image_width") else "")
    meta = " · ".join(x for x in (e(str(row.get("journal") or "")), e(str(row.get("year") or "")),
                                  article_links(row) or e(row["key"])) if x)
    cap = row.get("caption") or ""
    cap_html = e(_clip(cap, 300))
    if len(cap) > 300:
        cap_html += f'<details class="bk-more"><summary>full caption</summary>{e(cap)}</details>'
    refs = row.get("inline_refs") or []
    refs_html = ""
    if refs:
        items = "".join(
            f"<li>{('<b>' + e(r['section']) + ':</b> ') if r.get('section') else ''}"
            f"{_highlight(r.get('paragraph') or '', r.get('sentences') or [])}</li>"
            for r in refs)
        refs_html = (f'<details class="bk-more"><summary>inline references ({len(refs)})'
                     f"</summary><ol>{items}</ol></details>")
    state = []
    if decision:
        state.append(f"<b>{'accepted' if decision == 'accept' else 'rejected'}</b>")
    if tags:
        state.append("tags: " + ", ".join(e(t) for t in tags))
    if note:
        state.append(f"note: {e(_clip(note, 120))}")
    state_html = f'<div class="bk-meta">{" · ".join(state)}</div>' if state else ""
    cls = f"bk-card bk-dec-{decision}" if decision else "bk-card"
    return (f'<div class="{cls}" data-key="{e(row["key"])}">{img}'
            f'<div class="bk-meta"><b>{e(row.get("figure_label") or row["key"])}</b>'
            f'{kind}{e(size)} <span class="bk-lic" style="background:{color}">{e(lic)}</span>'
            f'</div><div class="bk-meta">{meta}</div>'
            f'<div class="bk-meta"><i>{e(_clip(row.get("title") or "", 140))}</i></div>'
            f'<div class="bk-cap">{cap_html}</div>{refs_html}{state_html}</div>')


def gallery_html(dataset: str | os.PathLike, rows: list[dict[str, Any]], *,
                 heading: str = "", page_size: int = 12, empty: str | None = None,
                 store: TagStore | None = None) -> str:
    """A self-contained HTML grid of cards (CSS and thumbnails inline), ``page_size`` cards a
    page with page links that need no JavaScript (radio buttons and CSS)."""
    head = f'<div class="bk-head">{html.escape(heading)}</div>' if heading else ""
    if not rows:
        msg = empty or "No sample matches these filters."
        return f'{GALLERY_CSS}{head}<p class="bk-empty">{html.escape(msg)}</p>'
    keys = [r["key"] for r in rows]
    dec = store.decisions(keys) if store else {}
    tg = store.tags_of(keys) if store else {}
    nt = store.notes(keys) if store else {}
    cards = [card_html(dataset, r, decision=dec.get(r["key"]), tags=tg.get(r["key"], ()),
                       note=nt.get(r["key"])) for r in rows]
    size = max(1, page_size)
    pages = [cards[i:i + size] for i in range(0, len(cards), size)]
    if len(pages) == 1:
        return f'{GALLERY_CSS}{head}<div class="bk-gallery">{"".join(cards)}</div>'
    gid = "bk" + hashlib.sha1("\0".join(keys).encode()).hexdigest()[:10]
    radios = "".join(f'<input type="radio" name="{gid}" id="{gid}-{i}"'
                     f'{" checked" if i == 0 else ""}>' for i in range(len(pages)))
    labels = "".join(f'<label for="{gid}-{i}">{i + 1}</label>' for i in range(len(pages)))
    rules = "".join(f"#{gid}-{i}:checked~.bk-page-{i}{{display:grid}}"
                    f"#{gid}-{i}:checked~.bk-pager label[for={gid}-{i}]"
                    f"{{background:#3d5a98;color:#fff}}" for i in range(len(pages)))
    body = "".join(f'<div class="bk-gallery bk-page bk-page-{i}">{"".join(p)}</div>'
                   for i, p in enumerate(pages))
    return (f"{GALLERY_CSS}<style>{rules}</style>{head}<div class=\"bk-pages\">{radios}"
            f'<div class="bk-pager">page {labels} ({len(rows)} cards, {size} a page)</div>'
            f"{body}</div>")
