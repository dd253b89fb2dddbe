"""Agreement statistics against published values, and votes resolved per target (majority,
ties listed and not applied, an expert's later vote replacing the earlier one)."""

from __future__ import annotations

import pytest

from biomedica_kit.labels.agreement import fleiss_kappa, krippendorff_alpha
from biomedica_kit.labels.review import Vote, resolve


def test_fleiss_kappa_of_fleiss_1971_example():
    # The 10 subjects x 14 raters x 5 categories table of Fleiss (1971), kappa 0.210.
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
             [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
             [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    k = fleiss_kappa([{str(j): n for j, n in enumerate(row)} for row in table])
    assert k.overall == pytest.approx(0.210, abs=5e-4) and k.items == 10
    assert set(k.per_label) == {"0", "1", "2", "3", "4"}
    # Category kappas average to the overall kappa, weighted by p_j q_j (Fleiss 1971).
    totals = [sum(r[j] for r in table) / 140 for j in range(5)]
    w = [p * (1 - p) for p in totals]
    mean = sum(k.per_label[str(j)] * w[j] for j in range(5)) / sum(w)
    assert mean == pytest.approx(k.overall)
    assert fleiss_kappa([{"a": 1}]).overall is None  # one rater: undefined


def test_krippendorff_alpha_of_krippendorffs_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha": 4 coders, 12 units, nominal
    # alpha = 0.743 ("." = not coded).
    coders = ["1 2 3 3 2 1 4 1 2 . . .", "1 2 3 3 2 2 4 1 2 5 . 3",
              ". 3 3 3 2 3 4 2 2 5 1 .", "1 2 3 3 2 4 4 1 2 5 1 ."]
    units = [[v for v in col if v != "."] for col in zip(*(c.split() for c in coders),
                                                          strict=True)]
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha([["a", "a"], ["a", "a"]]) is None  # one value only


def v(kind, target, who, secondary, at="2026-01-01T00:00:00Z", **kw):
    return Vote(kind, target, who, "P" if secondary else None, secondary, at=at, **kw)


def test_majority_ties_and_later_votes():
    votes = [v("cluster", "1", "a", "x"), v("cluster", "1", "b", "x"),
             v("cluster", "1", "c", "y"),
             v("cluster", "2", "a", "x"), v("cluster", "2", "b", "y"),
             v("cluster", "3", "a", "x"), v("cluster", "3", "a", "z", "2026-02-01T00:00:00Z"),
             v("sample", "k1", "a", None, flags=("not a figure",)),
             v("cluster", "4", "a", "x", panel_type="single"),
             v("cluster", "4", "b", "x", panel_type="multiple"),
             v("cluster", "4", "c", "x", panel_type="multiple")]
    r = resolve(votes)
    got = {x.target: x for x in r.resolved}
    assert sorted(got) == ["1", "3", "4", "k1"]  # "2" is a tie
    assert (got["1"].secondary, got["1"].status, got["1"].agreement) == \
        ("x", "majority", pytest.approx(2 / 3))
    assert got["3"].secondary == "z" and got["3"].status == "single"  # the later vote
    assert got["k1"].secondary is None and got["k1"].flag == "not a figure"
    assert got["4"].panel_type == "multiple" and got["4"].status == "unanimous"
    assert {(c.target, c.outcome) for c in r.conflicts} == {
        ("1", "majority: P / x"), ("2", "tie: not applied")}
    assert r.agreement.targets == 3 and r.votes == len(votes)
    assert r.agreement.krippendorff_alpha is not None
