"""Datasets for the curation tests (embed, cluster, labels), made once per session.

The 185 real figure-caption pairs of ``../shared/corpus/figures`` (PFOCR pathway figures,
MedICaT medical images, PMC article figures) imported with ``import_pairs``, embedded with the
default offline models (torchvision's real MobileNetV2 ImageNet weights, packaged, and
all-MiniLM-L6-v2, packaged), then clustered. Tests that change a dataset take a copy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach beyond loopback

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT.parent / "shared" / "corpus" / "figures" / "pairs.jsonl"
#: k and PCA width of the shared run: small enough for 185 samples.
K, PCA = 12, 32
_made: dict[str, Path] = {}


def pairs_dataset(tmp_path_factory) -> Path:
    """The real pairs imported and exported (read-only for tests: copy to change it)."""
    if "pairs" not in _made:
        from biomedica_kit.etl.pairs import import_pairs
        from biomedica_kit.tables.export import export

        assert PAIRS.is_file(), f"real pairs missing at {PAIRS} (../shared beside the repo)"
        out = tmp_path_factory.mktemp("pairs") / "ds"
        import_pairs(PAIRS, out, workers=1, progress=False)
        export(out, workers=1)
        _made["pairs"] = out
    return _made["pairs"]


def embedded_dataset(tmp_path_factory) -> Path:
    """:func:`pairs_dataset` plus the default embeddings (store ``STORE``)."""
    if "embedded" not in _made:
        from biomedica_kit.embed.run import embed

        out = tmp_path_factory.mktemp("embedded") / "ds"
        shutil.copytree(pairs_dataset(tmp_path_factory), out)
        embed(out, batch_size=32, part_size=64, workers=1, progress=False)
        _made["embedded"] = out
    return _made["embedded"]


STORE = "mobilenet_v2__all-MiniLM-L6-v2"


def clustered_dataset(tmp_path_factory) -> tuple[Path, str]:
    """:func:`embedded_dataset` clustered (k=K, pca=PCA, seed 0, PCA map), with proposals
    and a first label version; returns ``(dataset, run)``."""
    if "clustered" not in _made:
        from biomedica_kit.cluster.run import ClusterConfig, cluster
        from biomedica_kit.labels.proposals import propose_run
        from biomedica_kit.labels.table import propagate

        out = tmp_path_factory.mktemp("clustered") / "ds"
        shutil.copytree(embedded_dataset(tmp_path_factory), out)
        summary = cluster(out, ClusterConfig(k=K, pca=PCA, seed=0, map_method="pca"))
        propose_run(out, summary.run)
        propagate(out, summary.run)
        _made["clustered"] = out
        _made["run"] = Path(summary.run)
    return _made["clustered"], str(_made["run"])


def copy_of(dataset: Path, dest: Path) -> Path:
    """A private copy of a dataset (to change it)."""
    out = dest / "copy"
    shutil.copytree(dataset, out)
    return out
