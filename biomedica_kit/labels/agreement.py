"""Inter-annotator agreement: Fleiss' kappa (overall and per label) and Krippendorff's alpha.

Label Studio's open-source edition computes no agreement (it is an Enterprise feature), so
review computes it here from the votes themselves, for nominal labels:

- :func:`fleiss_kappa` (Fleiss 1971), over items each rated by two or more annotators; the
  number of raters may vary per item (the usual generalisation: each item's agreement is
  averaged, category shares pool every rating). Per-label kappa is Fleiss's
  category-specific kappa ``1 - sum_i n_ij (n_i - n_ij) / (sum_i n_i (n_i - 1) p_j q_j)``.
- :func:`krippendorff_alpha`, nominal, from the coincidence matrix (Krippendorff 2011); it
  takes any number of raters per unit and ignores units with fewer than two.

Both return None when undefined (no item with two ratings, or a single category overall).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Kappa", "fleiss_kappa", "krippendorff_alpha"]


@dataclass(frozen=True)
class Kappa:
    """Fleiss' kappa over ``items`` items, overall and per label (None where undefined)."""

    overall: float | None
    per_label: dict[str, float | None]
    items: int


def fleiss_kappa(counts: Sequence[Mapping[str, int]]) -> Kappa:
    """Fleiss' kappa from per-item label counts (``{label: raters choosing it}``)."""
    items = [{k: int(v) for k, v in c.items() if v} for c in counts]
    items = [c for c in items if sum(c.values()) >= 2]
    labels = sorted({k for c in items for k in c})
    if not items:
        return Kappa(None, {}, 0)
    totals: Counter[str] = Counter()
    agree = 0.0
    pairs = 0.0  # sum_i n_i (n_i - 1)
    for c in items:
        n = sum(c.values())
        totals.update(c)
        agree += sum(v * (v - 1) for v in c.values()) / (n * (n - 1))
        pairs += n * (n - 1)
    ratings = sum(totals.values())
    p = {k: totals[k] / ratings for k in labels}
    p_bar = agree / len(items)
    p_e = sum(v * v for v in p.values())
    overall = None if p_e >= 1.0 else (p_bar - p_e) / (1 - p_e)
    per_label: dict[str, float | None] = {}
    for k in labels:
        pq = p[k] * (1 - p[k])
        if pq == 0:
            per_label[k] = None
            continue
        dis = sum(c.get(k, 0) * (sum(c.values()) - c.get(k, 0)) for c in items)
        per_label[k] = 1 - dis / (pairs * pq)
    return Kappa(overall, per_label, len(items))


def krippendorff_alpha(units: Sequence[Sequence[Hashable]]) -> float | None:
    """Krippendorff's alpha (nominal) from each unit's values, one per rater who rated it."""
    coincidence: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for values in units:
        m = len(values)
        if m < 2:
            continue
        count = Counter(values)
        for c, nc in count.items():
            for k, nk in count.items():
                pairs = nc * (nk - 1) if c == k else nc * nk
                if pairs:
                    coincidence[(c, k)] += pairs / (m - 1)
    totals: dict[Hashable, float] = defaultdict(float)
    for (c, _k), v in coincidence.items():
        totals[c] += v
    n = sum(totals.values())
    if n <= 1:
        return None
    observed = sum(v for (c, k), v in coincidence.items() if c != k)
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    if expected == 0:
        return None
    return 1 - (n - 1) * observed / expected
