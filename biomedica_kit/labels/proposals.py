"""Label proposals for every cluster of a run, each with its scores and evidence.

For each cluster and each secondary label of the taxonomy, up to three scores, each a
probability distribution over the labels:

(a) ``zero_shot``: image-text scores of the cluster's exemplar images against the label
    prompts (``"a biomedical figure: <description>"``) when the image model has a text tower
    in the same space (open_clip models: BiomedCLIP, BMCA-CLIP); softmax at CLIP's
    temperature (100), averaged over exemplars.
(b) ``caption``: similarity of the exemplars' caption vectors to the label descriptions
    embedded by the store's caption model (works with a caption model alone: MiniLM offline);
    softmax at temperature ``caption_temperature``, averaged over captions.
(c) ``keywords``: the share of a seeded sample of member captions that contain each label's
    keywords (whole words), normalised over the labels.

The proposal is the label with the highest mean of the available scores; its primary label
is the secondary label's parent, so every proposal is a pair the taxonomy holds. The panel
type is ``multiple`` when most sampled captions name two or more panels ("(A) ... (B)",
"a, b"). Each row keeps every score, the top alternatives, the evidence (matched keywords
with counts, the exemplar keys, caption counts) and ``model_version`` (proposer, models,
taxonomy).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from biomedica_kit.base.atomic import write_parquet_atomic
from biomedica_kit.cluster.run import run_dir
from biomedica_kit.embed.encoders import Encoder, load_encoder
from biomedica_kit.embed.store import EmbeddingStore
from biomedica_kit.labels.taxonomy import Taxonomy, load_taxonomy
from biomedica_kit.tables.export import META_DIR
from biomedica_kit.tables.sql import sql_literal

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["PROPOSER_VERSION", "ProposalConfig", "keyword_scores", "panel_share",
           "proposal_rows", "propose_run", "softmax"]

PROPOSER_VERSION = "proposer/1"
_PANEL = re.compile(r"(?:^|[\s(\[])\(?([a-hA-H])(?:[\)\].:,]|\s*[-–]\s*[a-hA-H]\))")


@dataclass(frozen=True)
class ProposalConfig:
    """Parameters of the proposer (recorded in each row's ``model_version``)."""

    caption_sample: int = 200
    caption_temperature: float = 0.05
    zero_shot_temperature: float = 0.01
    alternatives: int = 3
    multiple_panels: float = 0.5  # share of captions naming >= 2 panels -> "multiple"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _keyword_patterns(tax: Taxonomy) -> list[re.Pattern[str] | None]:
    return [re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(k) for k in lab.keywords)
                       + r")(?![\w-])") if lab.keywords else None for lab in tax.labels]


def keyword_scores(captions: list[str], tax: Taxonomy
                   ) -> tuple[np.ndarray, dict[str, dict[str, int]]]:
    """Per label, the share of ``captions`` matching its keywords (normalised to sum 1 when
    any matched), and the evidence: label -> keyword -> captions containing it."""
    shares = np.zeros(len(tax.labels))
    evidence: dict[str, dict[str, int]] = {}
    lowered = [c.lower() for c in captions]
    for i, (lab, pat) in enumerate(zip(tax.labels, _keyword_patterns(tax), strict=True)):
        if pat is None or not lowered:
            continue
        hits: Counter[str] = Counter()
        matched = 0
        for c in lowered:
            found = set(pat.findall(c))
            if found:
                matched += 1
                hits.update(found)
        if matched:
            shares[i] = matched / len(lowered)
            evidence[lab.secondary] = dict(hits.most_common(5))
    total = shares.sum()
    return (shares / total if total else shares), evidence


def panel_share(captions: list[str]) -> float:
    """The share of captions that name at least two panels (letters a-h)."""
    if not captions:
        return 0.0
    multi = sum(1 for c in captions if len({m.lower() for m in _PANEL.findall(c)}) >= 2)
    return multi / len(captions)


def _prompts(tax: Taxonomy) -> list[str]:
    return [f"a biomedical figure: {lab.description}" for lab in tax.labels]


def _cluster_captions(dataset: Path, run: Path, sample: int, seed: int) -> dict[int, list[str]]:
    import duckdb

    con = duckdb.connect()
    rows = con.execute(
        f"SELECT cluster, caption FROM (SELECT a.cluster, f.caption, row_number() OVER "
        f"(PARTITION BY a.cluster ORDER BY hash(a.key || {sql_literal(str(seed))}), a.key) r "
        f"FROM read_parquet({sql_literal(str(run / 'assignments.parquet'))}) a JOIN "
        f"read_parquet({sql_literal(str(dataset / META_DIR / 'figures.parquet'))}) f "
        f"USING (key)) WHERE r <= {int(sample)}").fetchall()
    out: dict[int, list[str]] = {}
    for c, cap in rows:
        out.setdefault(int(c), []).append(cap or "")
    return out


@lru_cache(maxsize=2)
def _encoder(model: str, pretrained: str | None) -> Encoder:
    """An encoder loaded once per process (proposals for several runs reuse it)."""
    return load_encoder(model, pretrained=pretrained)


def _spec_encoder(spec: list[str | None] | None) -> Encoder | None:
    if not spec or not spec[0]:
        return None
    return _encoder(str(spec[0]), spec[1])


def propose_run(dataset: str | os.PathLike[str], run: str, *,
                taxonomy: str | os.PathLike[str] | None = None,
                cfg: ProposalConfig | None = None) -> pa.Table:
    """Score every cluster of ``run`` and write ``clusters/<run>/proposals.parquet``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = cfg or ProposalConfig()
    root = Path(dataset)
    out = run_dir(root, run)
    config = json.loads((out / "config.json").read_text())
    tax = load_taxonomy(taxonomy)
    store = EmbeddingStore(root, config["embeddings"])
    exemplars = pq.read_table(out / "exemplars.parquet").to_pylist()
    by_cluster: dict[int, list[str]] = {}
    for e in exemplars:
        if e["kind"] in ("centroid", "random") and e["key"] not in by_cluster.get(
                e["cluster"], []):
            by_cluster.setdefault(e["cluster"], []).append(e["key"])
    ex_keys = sorted({k for ks in by_cluster.values() for k in ks})

    text_enc = _spec_encoder(store.info.text_model_spec)
    caption_scores: dict[int, np.ndarray] = {}
    zero_scores: dict[int, np.ndarray] = {}
    if text_enc is not None and "text" in store.kinds():
        labels_vec = text_enc.encode_texts([lab.description for lab in tax.labels])
        keys, vecs = store.load("text", ex_keys)
        pos = {k: i for i, k in enumerate(keys)}
        for c, ks in by_cluster.items():
            sims = vecs[[pos[k] for k in ks]] @ labels_vec.T
            caption_scores[c] = softmax(sims / cfg.caption_temperature).mean(axis=0)
    if store.info.joint and text_enc is not None:
        prompts = text_enc.encode_texts(_prompts(tax))
        keys, vecs = store.load("image", ex_keys)
        pos = {k: i for i, k in enumerate(keys)}
        for c, ks in by_cluster.items():
            sims = vecs[[pos[k] for k in ks]] @ prompts.T
            zero_scores[c] = softmax(sims / cfg.zero_shot_temperature).mean(axis=0)
    captions = _cluster_captions(root, out, cfg.caption_sample, config["config"]["seed"])
    version = (f"{PROPOSER_VERSION};image={store.info.image_model_version};"
               f"text={store.info.text_model_version};taxonomy={tax.version}")
    rows = []
    for c in sorted(set(by_cluster) | set(captions)):
        caps = captions.get(c, [])
        kw, kw_evidence = keyword_scores(caps, tax)
        parts = {"zero_shot": zero_scores.get(c), "caption": caption_scores.get(c),
                 "keywords": kw if kw.sum() else None}
        avail = [v for v in parts.values() if v is not None]
        combined = np.mean(avail, axis=0) if avail else np.zeros(len(tax.labels))
        order = np.argsort(-combined, kind="stable")
        best = tax.labels[int(order[0])]
        share = panel_share(caps)

        def at(name: str, i: int, parts: dict[str, np.ndarray | None] = parts) -> float | None:
            v = parts[name]
            return None if v is None else round(float(v[i]), 4)

        alts = [{"primary_label": tax.labels[int(i)].primary,
                 "secondary_label": tax.labels[int(i)].secondary,
                 "score": round(float(combined[i]), 4),
                 **{f"score_{n}": at(n, int(i)) for n in parts}}
                for i in order[:cfg.alternatives]]
        evidence = {"keywords": {lab: kw_evidence[lab] for lab in
                                 (a["secondary_label"] for a in alts) if lab in kw_evidence},
                    "exemplars": by_cluster.get(c, []), "captions_sampled": len(caps),
                    "panel_share": round(share, 3), "scores_used": [n for n, v in parts.items()
                                                                    if v is not None]}
        i0 = int(order[0])
        rows.append({"cluster": c, "primary_label": best.primary,
                     "secondary_label": best.secondary,
                     "panel_type": "multiple" if share >= cfg.multiple_panels else "single",
                     "score": round(float(combined[i0]), 4),
                     "score_zero_shot": at("zero_shot", i0), "score_caption": at("caption", i0),
                     "score_keywords": at("keywords", i0),
                     "alternatives": json.dumps(alts), "evidence": json.dumps(evidence),
                     "model_version": version, "taxonomy_version": tax.version, "run": run})
    schema = pa.schema([("cluster", pa.int32()), ("primary_label", pa.string()),
                        ("secondary_label", pa.string()), ("panel_type", pa.string()),
                        ("score", pa.float32()), ("score_zero_shot", pa.float32()),
                        ("score_caption", pa.float32()), ("score_keywords", pa.float32()),
                        ("alternatives", pa.string()), ("evidence", pa.string()),
                        ("model_version", pa.string()), ("taxonomy_version", pa.string()),
                        ("run", pa.string())])
    table = pa.Table.from_pylist(rows, schema=schema)
    write_parquet_atomic(table, out / "proposals.parquet")
    return table


def proposal_rows(dataset: str | os.PathLike[str], run: str) -> list[dict[str, Any]]:
    """The proposals of a run as dicts (evidence and alternatives parsed)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(run_dir(dataset, run) / "proposals.parquet").to_pylist()
    for r in rows:
        r["alternatives"] = json.loads(r["alternatives"])
        r["evidence"] = json.loads(r["evidence"])
    return rows
