"""``biomedica evaluate`` on the bundled sample: two checkpoints side by side, the overlap
guard, the CLI and the 07_eval notebook; the metrics on inputs whose answers are known.

The checkpoints are the tiny CLIP (``biomedica-tiny-clip``) from two seeds, saved in the
format ``biomedica train`` writes (open_clip's keys plus the ``biomedica`` record): random
weights, so the tests check what the numbers are made of, not that they are high.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from biomedica_kit.analysis.report import PLOTLY_MIME, execute_notebook, resolve_notebook
from biomedica_kit.cli import main
from biomedica_kit.labels.table import override, read_labels, write_version
from biomedica_kit.labels.taxonomy import load_taxonomy
from biomedica_kit.tables.export import export
from biomedica_kit.tables.splits import make_split, split_digest, split_keys
from biomedica_train import metrics
from biomedica_train.evaluate import (
    PROMPT_TEMPLATES,
    EvalError,
    LeakageError,
    class_prompts,
    evaluate,
)
from biomedica_train.models import TINY_MODEL, load_model, resolve_model
from biomedica_train.results import RESULT_COLUMNS, read_config, read_results

TAX = load_taxonomy()
#: Test samples given reviewed labels (override), and proposals (counted only with "all").
REVIEWED_N, PROPOSED_N = 10, 4


def checkpoint(path: Path, seed: int, dataset: Path, *, used=("train",), digest=None,
               run: str | None = None, split_name="default") -> Path:
    """A tiny-CLIP checkpoint shaped as biomedica train writes it."""
    import torch

    torch.manual_seed(seed)
    loaded = load_model(resolve_model(TINY_MODEL))
    meta = {"arch": TINY_MODEL, "base_pretrained": None, "run": run or path.stem, "step": 3,
            "epoch": 1, "dataset": str(dataset), "dataset_version": "v-test",
            "split": {"name": split_name,
                      "digest": digest if digest is not None else
                      split_digest(dataset, split_name)[:16], "used": list(used)},
            "text": "caption", "subset": None, "labels": None}
    torch.save({"epoch": 1, "name": path.stem, "state_dict": loaded.model.state_dict(),
                "biomedica": meta}, path)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a small shared machine torch's thread pool spins against the
    other jobs (a tiny model's text pass measured 15x slower with two threads under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ds(sample_dataset, tmp_path_factory) -> Path:
    """The sample with a split, reviewed labels on ten test samples, proposals on four more
    and a reviewed label on a training sample (which must not count)."""
    out = tmp_path_factory.mktemp("eval") / "ds"
    shutil.copytree(sample_dataset, out)
    export(out, workers=1)
    make_split(out)
    test = sorted(split_keys(out, "test"))
    train = sorted(split_keys(out, "train"))
    assert len(test) > REVIEWED_N + PROPOSED_N
    micro, clinical = TAX.tree["Microscopy"][0], TAX.tree["Clinical Imaging"][0]
    override(out, test[:6], primary_label="Microscopy", secondary_label=micro)
    override(out, test[6:REVIEWED_N], primary_label="Clinical Imaging",
             secondary_label=clinical)
    override(out, train[:3], primary_label="Microscopy", secondary_label=micro)
    proposals = pl.DataFrame({"key": test[REVIEWED_N:REVIEWED_N + PROPOSED_N],
                              "primary_label": ["Microscopy"] * PROPOSED_N,
                              "secondary_label": [micro] * PROPOSED_N,
                              "label_source": ["proposal"] * PROPOSED_N})
    write_version(out, pl.concat([read_labels(out), proposals], how="diagonal_relaxed"),
                  {"kind": "test proposals"})
    return out


@pytest.fixture(scope="module")
def ckpts(ds, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return {"a": checkpoint(d / "a.pt", 0, ds, run="run-a"),
            "b": checkpoint(d / "b.pt", 1, ds, run="run-b")}


@pytest.fixture(scope="module")
def pair(ds, ckpts) -> pl.DataFrame:
    # three batches decoded in a worker process (by default a split this small is not)
    evaluate(ds, [str(ckpts["a"]), str(ckpts["b"])], name="pair", batch_size=8, workers=1,
             progress=False)
    return read_results(ds, "pair")


# ------------------------------------------------------------------------------ results


def test_two_checkpoints_side_by_side(ds, pair):
    n_test = len(split_keys(ds, "test"))
    assert pair.columns == list(RESULT_COLUMNS)
    assert pair["model"].unique(maintain_order=True).to_list() == ["run-a@3", "run-b@3"]
    versions = pair.group_by("model").agg(pl.col("model_version").unique())
    assert all(len(v) == 1 for v in versions["model_version"])  # one identity per model
    assert versions["model_version"].list.first().n_unique() == 2  # different weights
    overall = pair.filter(pl.col("group_by") == "all")
    for model in ("run-a@3", "run-b@3"):
        for task in ("retrieval_i2t", "retrieval_t2i"):
            r = {row["metric"]: row for row in overall.filter(
                (pl.col("model") == model) & (pl.col("task") == task)).iter_rows(named=True)}
            assert set(r) == {"recall@1", "recall@5", "recall@10"}
            values = [r[f"recall@{k}"]["value"] for k in (1, 5, 10)]
            assert all(0.0 <= v <= 1.0 for v in values)
            assert values[0] <= values[1] <= values[2]
            # values are shares of the n queries
            assert all(abs(v * n_test - round(v * n_test)) < 1e-9 for v in values)
            assert {row["n"] for row in r.values()} == {n_test}


def test_per_licence_and_per_label_breakdowns(ds, pair):
    import pyarrow.parquet as pq

    fig = pq.read_table(ds / "metadata" / "figures.parquet",
                        columns=["key", "license_category"]).to_pylist()
    test = split_keys(ds, "test")
    want: dict[str, int] = {}
    for r in fig:
        if r["key"] in test:
            want[r["license_category"] or "(unknown)"] = \
                want.get(r["license_category"] or "(unknown)", 0) + 1
    lic = pair.filter((pl.col("group_by") == "license_category")
                      & (pl.col("model") == "run-a@3") & (pl.col("metric") == "recall@5")
                      & (pl.col("task") == "retrieval_i2t"))
    assert dict(zip(lic["group"], lic["n"], strict=True)) == want
    by_label = pair.filter((pl.col("group_by") == "primary_label")
                           & (pl.col("model") == "run-a@3") & (pl.col("metric") == "recall@1")
                           & (pl.col("task") == "retrieval_t2i"))
    # reviewed labels only: the four proposals are unlabelled here
    assert dict(zip(by_label["group"], by_label["n"], strict=True)) == {
        "Microscopy": 6, "Clinical Imaging": REVIEWED_N - 6,
        "(unlabelled)": len(test) - REVIEWED_N}
    # the overall recall is the n-weighted mean of the groups'
    overall = pair.filter((pl.col("group_by") == "all") & (pl.col("model") == "run-a@3")
                          & (pl.col("metric") == "recall@1")
                          & (pl.col("task") == "retrieval_t2i"))["value"][0]
    assert (by_label["value"] * by_label["n"]).sum() / by_label["n"].sum() == \
        pytest.approx(overall)


def test_zero_shot_uses_exactly_the_taxonomy_classes(ds, pair):
    config = read_config(ds, "pair")
    assert config["classes"]["primary"] == list(TAX.tree)
    assert config["classes"]["secondary"] == [lab.secondary for lab in TAX.labels]
    assert len(config["classes"]["primary"]) == 16
    assert len(config["classes"]["secondary"]) == 119
    assert config["prompts"]["templates"] == list(PROMPT_TEMPLATES)
    assert config["prompts"]["primary"]["Microscopy"] == class_prompts(TAX, "primary")[1][
        list(TAX.tree).index("Microscopy")]
    zs = pair.filter(pl.col("task").str.starts_with("zeroshot") & (pl.col("model") == "run-a@3"))
    overall = {(r["task"], r["metric"]): r for r in zs.filter(pl.col("group_by") == "all")
               .iter_rows(named=True)}
    for task in ("zeroshot_primary", "zeroshot_secondary"):
        assert {m for t, m in overall if t == task} == {"top1", "top5", "balanced_accuracy"}
        assert {r["n"] for (t, _), r in overall.items() if t == task} == {REVIEWED_N}
        assert overall[(task, "top1")]["value"] <= overall[(task, "top5")]["value"]
        per = zs.filter((pl.col("task") == task) & (pl.col("group_by") == "class")
                        & (pl.col("metric") == "top1"))
        level = task.split("_")[1]
        assert set(per["group"]) <= set(config["classes"][level])
        assert per["n"].sum() == REVIEWED_N  # the training sample's label does not count
        assert per["value"].mean() == pytest.approx(overall[(task, "balanced_accuracy")]
                                                    ["value"])
        assert (per["value"] * per["n"]).sum() / REVIEWED_N == pytest.approx(
            overall[(task, "top1")]["value"])
    assert config["samples"]["zeroshot_primary"] == REVIEWED_N
    assert config["labels"]["sources"] == ["expert", "override"]


def test_label_source_all_counts_proposals(ds, ckpts, tmp_path):
    evaluate(ds, [str(ckpts["a"])], out=tmp_path / "all",
             label_sources=("proposal", "expert", "override"), progress=False)
    rows = read_results(tmp_path / "all")
    n = rows.filter((pl.col("task") == "zeroshot_primary") & (pl.col("group_by") == "all"))["n"]
    assert set(n) == {REVIEWED_N + PROPOSED_N}
    assert not (ds / "eval" / "all").exists()  # --out: nowhere else


def test_results_files(ds, pair):
    folder = ds / "eval" / "pair"
    md = (folder / "results.md").read_text()
    assert "| task | metric | run-a@3 | run-b@3 | n |" in md
    assert "## Retrieval by licence" in md and "## Zero-shot by class" in md
    config = json.loads((folder / "config.json").read_text())
    assert config["split"]["name"] == "default" and config["split"]["split"] == "test"
    assert config["split"]["digest"] == split_digest(ds)
    assert config["labels"]["version"] == read_labels(ds)["label_version"][0]
    assert [m["label"] for m in config["models"]] == ["run-a@3", "run-b@3"]
    assert not any(m["leakage"] for m in config["models"])
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".tmp")]


# --------------------------------------------------------------------------- the guard


def test_a_checkpoint_trained_on_the_test_split_is_refused(ds, tmp_path):
    leaky = checkpoint(tmp_path / "leaky.pt", 2, ds, used=("train", "test"), run="leaky")
    with pytest.raises(LeakageError, match="trained on the 'test' part of split 'default'"):
        evaluate(ds, [str(leaky)], out=tmp_path / "no", progress=False)
    assert not (tmp_path / "no").exists()
    # the validation part it did not train on is fine
    evaluate(ds, [str(leaky)], split="validation", out=tmp_path / "val", progress=False)
    # allowed explicitly, and then labelled as such everywhere
    evaluate(ds, [str(leaky)], out=tmp_path / "yes", allow_overlap=True, progress=False)
    rows = read_results(tmp_path / "yes")
    assert set(rows["model"]) == {"leaky@3 [trained on default/test]"}
    assert read_config(tmp_path / "yes")["models"][0]["leakage"] is True
    assert "trained on this split" in (tmp_path / "yes" / "results.md").read_text()


def test_a_checkpoint_trained_without_a_split_overlaps_its_dataset(ds, tmp_path):
    everything = checkpoint(tmp_path / "all.pt", 3, ds, used=("all",), run="all")
    with pytest.raises(LeakageError, match="no split"):
        evaluate(ds, [str(everything)], out=tmp_path / "no", progress=False)


def test_a_changed_split_file_warns(ds, tmp_path):
    old = checkpoint(tmp_path / "old.pt", 4, ds, digest="0123456789abcdef", run="old")
    with pytest.warns(UserWarning, match="changed since training"):
        s = evaluate(ds, [str(old)], out=tmp_path / "w", progress=False)
    assert any("changed since training" in w for w in read_config(tmp_path / "w")["warnings"])
    assert s.warnings


def test_missing_split_is_a_clear_error(sample_dataset, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(sample_dataset, bare)
    shutil.rmtree(bare / "splits", ignore_errors=True)
    with pytest.raises(EvalError, match=r"no split 'default'.*run `biomedica split"):
        evaluate(bare, [TINY_MODEL], progress=False)
    assert not (bare / "eval").exists()


# ----------------------------------------------------------------------------------- CLI


def test_cli_side_by_side(ds, ckpts):
    res = CliRunner().invoke(main, ["evaluate", str(ds), "--model", str(ckpts["a"]),
                                    "--model", TINY_MODEL, "--name", "cli", "--no-progress",
                                    "--batch-size", "16"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "| task | metric | run-a@3 | biomedica-tiny-clip | n |" in res.output
    assert "| retrieval_i2t | recall@1 |" in res.output
    rows = read_results(ds, "cli")
    assert rows["model"].unique(maintain_order=True).to_list() == ["run-a@3", TINY_MODEL]
    tiny = rows.filter(pl.col("model") == TINY_MODEL)["model_version"].unique().to_list()
    assert tiny == [f"open_clip/{TINY_MODEL}:random-init"]


def test_cli_refusals(ds, ckpts, tmp_path):
    run = CliRunner()
    res = run.invoke(main, ["evaluate", str(ds), "--model", TINY_MODEL, "--model", TINY_MODEL,
                            "--pretrained", "openai"])
    assert res.exit_code == 2 and "write each as --model ARCH,PRETRAINED" in res.output
    leaky = checkpoint(tmp_path / "leaky.pt", 5, ds, used=("test",), run="leaky")
    res = run.invoke(main, ["evaluate", str(ds), "--model", str(leaky), "--no-progress"])
    assert res.exit_code == 1 and "--allow-overlap" in res.output
    res = run.invoke(main, ["evaluate", str(ds), "--model", TINY_MODEL, "--split-name", "nope",
                            "--no-progress"])
    assert res.exit_code == 1 and "run `biomedica split" in res.output


# ------------------------------------------------------------------------------ notebook


def test_eval_notebook_shows_the_table_and_charts(ds, pair, tmp_path):
    path = resolve_notebook("07_eval")
    src = nbformat.read(path, as_version=4)
    assert src.metadata["biomedica"]["requires"] == ["eval/*/results.parquet"]
    tagged = [c for c in src.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert 'dataset = os.environ.get("BIOMEDICA_DATASET", "../build/demo")' in tagged[0].source
    for c in src.cells:
        if c.cell_type == "code":
            assert not c.outputs and "def " not in c.source and "plotly" not in c.source
    out = tmp_path / "07_eval.ipynb"
    execute_notebook(path, out, {"dataset": str(ds), "name": "pair"}, timeout=300)
    nb = nbformat.read(out, as_version=4)
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    html = "\n".join(o.data.get("text/html", "") for o in outs if "data" in o)
    assert "run-a@3" in html and "run-b@3" in html and "recall@10" in html
    figs = {o.data[PLOTLY_MIME]["layout"]["meta"]["chart"]: o.data[PLOTLY_MIME]
            for o in outs if PLOTLY_MIME in o.get("data", {})}
    assert set(figs) == {"recall", "zero_shot", "by_licence"}
    recall = {t["name"]: dict(zip(t["x"], t["y"], strict=True)) for t in figs["recall"]["data"]}
    assert set(recall) == {"run-a@3", "run-b@3"}
    want = pair.filter((pl.col("model") == "run-b@3") & (pl.col("group_by") == "all")
                       & (pl.col("task") == "retrieval_t2i") & (pl.col("metric") == "recall@5"))
    assert recall["run-b@3"]["text→image recall@5"] == pytest.approx(want["value"][0])


# ------------------------------------------------------------------------------- metrics


def test_retrieval_ranks_on_known_vectors():
    eye = np.eye(4, dtype=np.float32)
    ranks = metrics.retrieval_ranks(eye, eye, np.arange(4))
    assert ranks.tolist() == [0, 0, 0, 0]
    # query 0 is closest to gallery 1, then 0: its own item ranks second
    q = np.array([[0.6, 0.8, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    ranks = metrics.retrieval_ranks(q, eye, np.arange(4), block=3)
    assert ranks.tolist() == [1, 0, 0, 0]
    assert metrics.recall_at(ranks, 1) == 0.75 and metrics.recall_at(ranks, 2) == 1.0
    # samples 0 and 1 share a caption: gallery 1 now answers query 0 at rank 0
    classes = metrics.equivalence_classes(["x", "x", "y", "z"], [None, None, None, None])
    assert metrics.retrieval_ranks(q, eye, classes).tolist() == [0, 0, 0, 0]


def test_equivalence_classes_join_captions_and_images():
    cls = metrics.equivalence_classes(["a", "b", "b", "c", ""], ["h1", "h2", "h3", "h1", ""])
    assert cls[0] == cls[3] and cls[1] == cls[2] and cls[0] != cls[1]
    assert len(set(cls.tolist())) == 3  # empty values match nothing


def test_zero_shot_metrics_on_known_scores():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.3, 0.6],
                       [0.3, 0.6, 0.1]])
    truth = np.array([0, 1, 1, 2, 2])
    res = metrics.zero_shot(scores, truth)
    assert res.n == 5 and res.top1 == pytest.approx(3 / 5)
    assert res.per_class == {0: (1, 1.0, 1.0), 1: (2, 0.5, 1.0), 2: (2, 0.5, 1.0)}
    assert res.balanced_accuracy == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert res.predicted.tolist() == [0, 1, 0, 2, 1]
    assert metrics.topk_hits(scores, truth, 2).tolist() == [True, True, True, True, False]
    assert res.top5 == 1.0  # k capped at the number of classes


# ------------------------------------------------------------------- a real training run


def test_a_checkpoint_of_biomedica_train(ds, tmp_path):
    """Two steps of the real trainer on the train split: its checkpoint's own record lets it
    be evaluated on test, and refuses the train part it trained on."""
    from biomedica_train.train import TrainConfig, train

    r = train(TrainConfig(dataset=str(ds), model=TINY_MODEL, batch_size=8, lr=5e-4, warmup=0,
                          workers=0, log_every=1, shuffle=16, samples_per_epoch=16,
                          out=str(tmp_path / "run")))
    ckpt = str(r.checkpoint)
    s = evaluate(ds, [ckpt, TINY_MODEL], out=tmp_path / "eval", progress=False)
    assert not [w for w in s.warnings if "split" in w]  # the digest it recorded matches
    config = read_config(tmp_path / "eval")
    recorded = config["models"][0]["checkpoint"]["split"]
    assert recorded["name"] == "default" and recorded["used"] == ["train"]
    assert split_digest(ds).startswith(recorded["digest"])
    assert config["models"][0]["leakage"] is False
    assert set(read_results(tmp_path / "eval")["model"]) == {s.models[0], TINY_MODEL}
    with pytest.raises(LeakageError, match="'train' part of split 'default'"):
        evaluate(ds, [ckpt], split="train", out=tmp_path / "no", progress=False)
