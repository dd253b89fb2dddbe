"""Generate a SYNTHETIC PMC OA mirror in NCBI's layout, for benchmarks only.

Every file says it is synthetic: the journal is "SYNTHETIC", the XML opens with a comment saying
so, titles start with "SYNTHETIC", the file list's citations name the SYNTHETIC journal, and each
image carries the word in its pixels and (PNG/TIFF/GIF) in its metadata where the format allows.

The JATS structure is modelled on a real PMC OA article of the corpus (PMC12419688, The Plant
Cell): PMC-style front matter (journal-meta, article-ids pmid/pmc/doi, permissions with an
``ali:license_ref``), sections of paragraphs citing figures with ``<xref ref-type="fig">``,
``<fig>`` with label, caption title and paragraph, a ``<graphic xlink:href>`` without extension,
and a reference list. Images have realistic sizes and formats: full-size JPEG figures 1000-2000
px on the long side, plus PNG, TIFF and GIF renditions at thumbnail to mid size.

Usage::

    python bench/synth.py OUT_DIR --articles 200 [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

LICENSES = [("CC BY", "https://creativecommons.org/licenses/by/4.0/"),
            ("CC BY-NC", "https://creativecommons.org/licenses/by-nc/4.0/"),
            ("CC BY-NC-ND", "https://creativecommons.org/licenses/by-nc-nd/4.0/"),
            ("CC0", "https://creativecommons.org/publicdomain/zero/1.0/"),
            ("NO-CC CODE", None)]
WORDS = (
    "phosphate", "root", "mycorrhizal", "signalling", "uptake", "plant", "cell", "expression",
    "protein", "mutant", "pathway", "transport", "starvation", "response", "gene", "regulation",
    "sample", "tissue", "analysis", "model", "data", "figure", "panel", "control", "treatment",
    "significant", "increase", "decrease", "measured",
)
_NOISE = Image.merge("RGB", [Image.effect_noise((2600, 2200), 18)] * 3)
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def sentence(rng: random.Random, n: int = 14) -> str:
    """A sentence of filler words (the content is meaningless by design)."""
    words = [rng.choice(WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + "."


def image(rng: random.Random, w: int, h: int, label: str) -> Image.Image:
    """A figure-like picture: panels, bars and curves on white, labelled SYNTHETIC."""
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 4)):  # panels with plotted content
        x0, y0 = rng.randint(0, w // 2), rng.randint(0, h // 2)
        x1, y1 = x0 + rng.randint(w // 4, w // 2), y0 + rng.randint(h // 4, h // 2)
        d.rectangle([x0, y0, x1, y1], outline=(0, 0, 0), width=3)
        color = tuple(rng.randint(0, 255) for _ in range(3))
        for i in range(rng.randint(4, 10)):
            bx = x0 + 10 + i * max(4, (x1 - x0) // 12)
            d.rectangle([bx, y1 - rng.randint(10, max(11, y1 - y0 - 10)), bx + 8, y1],
                        fill=color)
        pts = [(x0 + i * (x1 - x0) // 20, rng.randint(y0, y1)) for i in range(21)]
        d.line(pts, fill=(200, 30, 30), width=2)
    # Noise keeps JPEG sizes realistic (a flat synthetic image compresses to almost nothing);
    # one noise field is made once and cropped at a random offset, which is much cheaper.
    ox, oy = rng.randint(0, _NOISE.width - w), rng.randint(0, _NOISE.height - h)
    img = Image.blend(img, _NOISE.crop((ox, oy, ox + w, oy + h)), 0.12)
    ImageDraw.Draw(img).text((10, 10), f"SYNTHETIC {label}", fill=(0, 0, 0))
    return img


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=88)
    elif fmt == "PNG":
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "SYNTHETIC benchmark image")
        img.save(buf, "PNG", pnginfo=info)
    elif fmt == "TIFF":
        img.save(buf, "TIFF", compression="tiff_lzw", description="SYNTHETIC benchmark image")
    else:
        img.convert("P", palette=Image.Palette.ADAPTIVE).save(buf, "GIF",
                                                              comment=b"SYNTHETIC")
    return buf.getvalue()


def article_xml(rng: random.Random, n: int, pmcid: str, figs: list[str], lic_url: str | None,
                year: int) -> bytes:
    """JATS for one synthetic article (structure after a real PMC nXML)."""
    fig_xml, body = [], []
    for i, stem in enumerate(figs, 1):
        fig_xml.append(
            f'<fig id="syn{n}-F{i}" position="float"><label>Figure {i}.</label><caption>'
            f"<title>SYNTHETIC figure {i}: {sentence(rng, 6)}</title><p>{sentence(rng, 30)} "
            f"{sentence(rng, 20)}</p></caption>"
            f'<graphic xlink:href="{stem}" position="float"/></fig>')
    for s in range(3):
        paras = []
        for _ in range(3):
            cite = rng.randint(1, len(figs)) if figs else None
            xref = (f' (<xref rid="syn{n}-F{cite}" ref-type="fig">Figure {cite}</xref>)'
                    if cite else "")
            paras.append(f"<p>{sentence(rng)} {sentence(rng)}{xref} {sentence(rng)}</p>")
        body.append(f'<sec id="s{s}"><title>Section {s + 1}</title>{"".join(paras)}</sec>')
    lic = (f'<license xlink:href="{lic_url}"><ali:license_ref>{lic_url}</ali:license_ref>'
           f"<license-p>SYNTHETIC licence statement.</license-p></license>" if lic_url else
           "<license><license-p>SYNTHETIC custom terms.</license-p></license>")
    refs = "".join(f'<ref id="r{i}"><mixed-citation publication-type="journal">'
                   f"{sentence(rng, 8)} <source>SYNTHETIC</source>. <year>{year - i}</year>."
                   f"</mixed-citation></ref>" for i in range(12))
    xml = f"""<!-- SYNTHETIC article generated by bench/synth.py for benchmarking only. Not a real
publication: the text, metadata and images are random. -->
<!DOCTYPE article PUBLIC "-//NLM//DTD JATS (Z39.96) Journal Archiving and Interchange DTD with \
MathML3 v1.3 20210610//EN" "JATS-archivearticle1-3-mathml3.dtd">
<article xmlns:mml="http://www.w3.org/1998/Math/MathML" \
xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:ali="http://www.niso.org/schemas/ali/1.0/" \
dtd-version="1.3" xml:lang="en" article-type="research-article"><front><journal-meta>\
<journal-id journal-id-type="nlm-ta">SYNTHETIC</journal-id><journal-title-group>\
<journal-title>SYNTHETIC</journal-title></journal-title-group><issn pub-type="epub">0000-0000\
</issn><publisher><publisher-name>SYNTHETIC</publisher-name></publisher></journal-meta>\
<article-meta><article-id pub-id-type="pmid">{90000000 + n}</article-id>\
<article-id pub-id-type="pmc">{pmcid[3:]}</article-id>\
<article-id pub-id-type="doi">10.0000/synthetic.{n}</article-id>\
<article-categories><subj-group subj-group-type="heading"><subject>SYNTHETIC</subject>\
</subj-group></article-categories><title-group><article-title>SYNTHETIC {sentence(rng, 8)}\
</article-title></title-group><pub-date pub-type="epub"><day>{rng.randint(1, 28)}</day>\
<month>{rng.randint(1, 12)}</month><year>{year}</year></pub-date><volume>1</volume>\
<issue>1</issue><fpage>{n}</fpage><permissions><copyright-statement>SYNTHETIC\
</copyright-statement>{lic}</permissions><abstract><p>{sentence(rng, 40)}</p></abstract>\
<kwd-group><kwd>SYNTHETIC</kwd><kwd>{rng.choice(WORDS)}</kwd></kwd-group></article-meta>\
</front><body>{"".join(body)}{"".join(fig_xml)}</body><back><ref-list><title>References\
</title>{refs}</ref-list></back></article>
"""
    return xml.encode()


def make_package(rng: random.Random, n: int) -> tuple[str, bytes, str, str]:
    """One synthetic package: (name, tar.gz bytes, licence value, year)."""
    pmcid = f"PMC{80000000 + n}"
    code, url = LICENSES[n % len(LICENSES)]
    year = 2000 + n % 25
    members: dict[str, bytes] = {}
    figs = []
    for i in range(1, rng.randint(2, 5) + 1):
        stem = f"syn{n}f{i}"
        figs.append(stem)
        long_side = rng.randint(1000, 2000)
        w, h = (long_side, int(long_side * rng.uniform(0.55, 0.9)))
        img = image(rng, w, h, f"{pmcid} fig {i}")
        members[f"{stem}.jpg"] = encode(img, "JPEG")
        # PMC ships small renditions beside the full figure; here in varied formats.
        fmt = ("GIF", "PNG", "TIFF")[i % 3]
        thumb = img.copy()
        thumb.thumbnail((rng.choice((150, 300, 600)),) * 2)
        members[f"{stem}.{fmt.lower().replace('jpeg', 'jpg')}"] = encode(thumb, fmt)
    members[f"{pmcid}.nxml"] = article_xml(rng, n, pmcid, figs, url, year)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(f"{pmcid}/{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return pmcid, gzip.compress(raw.getvalue(), compresslevel=6, mtime=0), code, str(year)


def make_mirror(out: Path, articles: int, seed: int = 0) -> Path:
    """Write an NCBI-layout SYNTHETIC mirror of ``articles`` packages into ``out``."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from biomedica_kit.ingest.sources import LAST_UPDATED, write_file_list

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(articles):
        rng = random.Random(seed * 1_000_003 + n)
        name, data, lic, year = make_package(rng, n)
        h = hashlib.md5(name.encode()).hexdigest()
        rel = f"oa_package/{h[:2]}/{h[2:4]}/{name}.tar.gz"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        rows.append({"File": rel, "Article Citation": f"SYNTHETIC. {year} {MONTHS[n % 12]} 1; "
                     f"1(1):{n}", "Accession ID": name,
                     LAST_UPDATED: f"{year}-01-01 00:00:00", "PMID": str(90000000 + n),
                     "License": lic})
    write_file_list(rows, out / "oa_file_list.csv")
    (out / "SYNTHETIC.txt").write_text(
        "Everything in this folder is SYNTHETIC, generated by bench/synth.py for benchmarks.\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--articles", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    make_mirror(a.out, a.articles, a.seed)
    print(f"wrote {a.articles} SYNTHETIC packages to {a.out}")


if __name__ == "__main__":
    main()
