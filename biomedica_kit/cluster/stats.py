"""Per-cluster statistics: size, distances, licence mix, journals, years, caption terms.

Counts come from DuckDB over ``assignments.parquet`` joined to ``metadata/figures.parquet`` (it
streams 24M rows without holding them). Caption terms are class-based TF-IDF (BERTopic's
c-TF-IDF): for each cluster, the words of a seeded sample of at most ``terms_sample``
member captions, weighted by how much more often they occur there than across all clusters.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_kit.tables.sql import sql_literal

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["CAPTION_STOP_WORDS", "cluster_stats", "top_terms", "words"]

_STOP = """
figure fig figs panel panels shown show shows showing image images representative indicate
indicates indicated data using used use respectively left right top bottom upper lower
inset arrow arrows arrowheads scale bar bars error mean means sd sem significant
significantly compared control versus vs number each group groups results result different
day days time times value values sample samples analysis shown presented see text table
"""
#: Words of figure captions that say nothing about the content.
CAPTION_STOP_WORDS = frozenset(_STOP.split())
_WORD = re.compile(r"[a-z][a-z0-9\-]{2,}")


def words(text: str) -> list[str]:
    """Lower-case content words of a caption (English and caption stop words removed)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return [w for w in _WORD.findall(text.lower())
            if w not in ENGLISH_STOP_WORDS and w not in CAPTION_STOP_WORDS]


def top_terms(captions: dict[int, list[str]], n: int = 10) -> dict[int, list[str]]:
    """The ``n`` most distinctive words of each cluster's captions (c-TF-IDF)."""
    counts = {c: Counter(w for cap in caps for w in words(cap)) for c, caps in captions.items()}
    total: Counter[str] = Counter()
    for cnt in counts.values():
        total.update(cnt)
    avg = sum(total.values()) / max(1, len(counts))
    out = {}
    for c, cnt in counts.items():
        size = sum(cnt.values()) or 1
        scored = sorted(cnt.items(), key=lambda kv: (-(kv[1] / size) * math.log(
            1 + avg / total[kv[0]]), kv[0]))
        out[c] = [w for w, _ in scored[:n]]
    return out


def _columns(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    return set(pq.read_schema(path).names)


def cluster_stats(assignments: Path, figures: Path, *, seed: int = 0,
                  terms_sample: int = 200, n_terms: int = 10) -> pa.Table:
    """One row per cluster: ``cluster``, ``size``, ``mean_distance``, ``max_distance``,
    ``licenses`` (JSON: category -> count), ``journals`` (JSON: top 5 -> count),
    ``year_min``/``year_median``/``year_max``, ``top_terms`` (list of words)."""
    import duckdb
    import pyarrow as pa

    fcols = _columns(figures)
    con = duckdb.connect()
    con.execute(f"CREATE VIEW a AS SELECT * FROM read_parquet({sql_literal(str(assignments))})")
    con.execute(f"CREATE VIEW f AS SELECT * FROM read_parquet({sql_literal(str(figures))})")
    base = {int(r[0]): {"cluster": int(r[0]), "size": int(r[1]), "mean_distance": float(r[2]),
                        "max_distance": float(r[3])}
            for r in con.execute("SELECT cluster, count(*), avg(distance), max(distance) "
                                 "FROM a GROUP BY cluster ORDER BY cluster").fetchall()}

    def mix(col: str, top: int | None) -> dict[int, str]:
        if col not in fcols:
            return {}
        rows = con.execute(
            f"SELECT a.cluster, coalesce(CAST(f.{col} AS VARCHAR), '(none)') v, count(*) n "
            f"FROM a JOIN f USING (key) GROUP BY 1, 2 ORDER BY 1, n DESC, v").fetchall()
        out: dict[int, dict[str, int]] = {}
        for c, v, n in rows:
            d = out.setdefault(int(c), {})
            if top is None or len(d) < top:
                d[str(v)] = int(n)
        return {c: json.dumps(d) for c, d in out.items()}

    licenses, journals = mix("license_category", None), mix("journal", 5)
    years: dict[int, tuple[Any, Any, Any]] = {}
    if "year" in fcols:
        for c, lo, med, hi in con.execute(
                "SELECT a.cluster, min(y), median(y), max(y) FROM a JOIN "
                "(SELECT key, TRY_CAST(year AS INTEGER) y FROM f) USING (key) "
                "GROUP BY 1").fetchall():
            years[int(c)] = (lo, med, hi)
    caps: dict[int, list[str]] = {c: [] for c in base}
    for c, cap in con.execute(
            f"SELECT cluster, caption FROM (SELECT a.cluster, f.caption, row_number() OVER "
            f"(PARTITION BY a.cluster ORDER BY hash(a.key || {sql_literal(str(seed))}), a.key) r "
            f"FROM a JOIN f USING (key)) WHERE r <= {int(terms_sample)}").fetchall():
        caps[int(c)].append(cap or "")
    terms = top_terms(caps, n_terms)
    rows = []
    for c, row in base.items():
        lo, med, hi = years.get(c, (None, None, None))
        rows.append({**row, "licenses": licenses.get(c, "{}"), "journals": journals.get(c, "{}"),
                     "year_min": lo, "year_median": None if med is None else float(med),
                     "year_max": hi, "top_terms": terms.get(c, [])})
    schema = pa.schema([("cluster", pa.int32()), ("size", pa.int64()),
                        ("mean_distance", pa.float32()), ("max_distance", pa.float32()),
                        ("licenses", pa.string()), ("journals", pa.string()),
                        ("year_min", pa.int32()), ("year_median", pa.float32()),
                        ("year_max", pa.int32()), ("top_terms", pa.list_(pa.string()))])
    return pa.Table.from_pylist(rows, schema=schema)
