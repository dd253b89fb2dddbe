"""biomedica train: open_clip's own training loop on the bundled sample's shards, by streaming.

The model is ``biomedica-tiny-clip`` from random weights (no CLIP weights can be downloaded
here); the data, the loop, the checkpoints and the resume are the real ones.
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from biomedica_kit.base.atomic import TMP_PREFIX
from biomedica_kit.cli import main
from biomedica_kit.labels.table import read_labels
from biomedica_kit.tables.splits import make_split, split_keys
from biomedica_train.data import MixPart, parse_mix, sample_stream, select
from biomedica_train.models import TINY_MODEL, checkpoint_meta, load_model, resolve_model
from biomedica_train.text import TextTemplate
from biomedica_train.train import LATEST, TrainConfig, TrainError, read_metrics, train

# Two articles of the sample (15 figures): small enough for a few CPU steps to fit them.
FEW = "article_id IN ('doi_10.7554/eLife.46472', 'doi_10.1590/S0100-879X2004000400003')"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, sample_dataset: Path) -> Path:
    out = tmp_path_factory.mktemp("train") / "ds"
    shutil.copytree(sample_dataset, out)
    make_split(out)
    return out


def _config(ds: Path, out: Path, **kw) -> TrainConfig:
    base = {"dataset": str(ds), "model": TINY_MODEL, "batch_size": 8, "lr": 5e-4,
            "warmup": 0, "workers": 1, "log_every": 1, "shuffle": 64, "out": str(out),
            "split_name": None, "subset": FEW, "samples_per_epoch": 64}
    return TrainConfig(**{**base, **kw})


def test_a_few_steps_lower_the_loss_and_write_open_clip_checkpoints(dataset, tmp_path):
    run = tmp_path / "run"
    r = train(_config(dataset, run, epochs=3))
    assert r.steps == 24 and r.samples == 192
    losses = [v for _, v in r.losses]
    assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.1, losses
    assert last < math.log(8) - 0.1, losses  # below chance for batches of 8: it learned
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.pt"))
    assert ckpts == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt", LATEST]
    ckpt = torch.load(run / "checkpoints" / "epoch_3.pt", map_location="cpu", weights_only=True)
    assert {"epoch", "name", "state_dict", "optimizer"} <= set(ckpt) and ckpt["epoch"] == 3
    meta = ckpt["biomedica"]
    assert meta["arch"] == TINY_MODEL and meta["step"] == 24 and meta["text"] == "caption"
    assert meta["mix"] == [{"where": FEW, "weight": 1.0, "samples": 15}]
    # open_clip itself loads it, and biomedica names it by the checkpoint alone
    spec = resolve_model(str(run / "checkpoints" / "epoch_3.pt"))
    assert spec.arch == TINY_MODEL
    model = load_model(spec).model
    assert torch.equal(model.state_dict()["logit_scale"], ckpt["state_dict"]["logit_scale"])
    assert not list(run.rglob(f"{TMP_PREFIX}*"))
    assert (run / "out.log").read_text().count("Train Epoch: 2") >= 8


def test_trains_on_the_train_split_only_and_records_it(dataset):
    sel = select(dataset, text=TextTemplate("caption"))
    train_keys = split_keys(dataset, "train")
    assert sel.keys[0] == train_keys  # every train key has a caption in the sample
    assert sel.validation.num_rows == len(split_keys(dataset, "validation"))
    assert sel.describe()["split"]["used"] == ["train"]
    assert len(sel.describe()["split"]["digest"]) == 16
    # the stream yields only train keys, before any image is decoded
    seen = set()
    for key in sample_stream(sel, lambda raw: raw["__key__"], seed=0, shuffle=0,
                             epoch=lambda: 0):
        seen.add(key)
        if len(seen) == len(train_keys):
            break
    assert seen == train_keys


def test_mix_draws_parts_by_weight(dataset):
    parts = parse_mix([f"3:{FEW}", "1:article_id = 'doi_10.7554/eLife.46793'"])
    assert parts == [MixPart(FEW, 3.0), MixPart("article_id = 'doi_10.7554/eLife.46793'", 1.0)]
    sel = select(dataset, parts=parts, split_name=None)
    assert sel.counts == [15, 19]
    few = sel.keys[0]
    assert few is not None
    drawn = []
    for key in sample_stream(sel, lambda raw: raw["__key__"], seed=1, shuffle=0,
                             epoch=lambda: 0):
        drawn.append(key in few)
        if len(drawn) == 400:
            break
    share = sum(drawn) / len(drawn)
    assert 0.65 < share < 0.85, share  # 3:1 whatever the parts' sizes (15 vs 19)
    with pytest.raises(ValueError, match="WEIGHT:PREDICATE"):
        parse_mix(["heavy:year > 2000"])


def test_label_text_and_reviewed_filter(tmp_path, tmp_path_factory):
    from curate_datasets import clustered_dataset, copy_of

    from biomedica_kit.labels.table import Decision, decide

    src, run = clustered_dataset(tmp_path_factory)  # the 185 real pairs, proposals propagated
    ds = copy_of(src, tmp_path)
    decide(ds, run, [Decision(cluster=0, action="accept"), Decision(cluster=1, action="accept")])
    labels = read_labels(ds)
    reviewed = set(labels.filter(labels["label_source"].is_in(["expert", "override"]))["key"])
    assert reviewed
    sel = select(ds, split_name=None, labels="reviewed", text=TextTemplate("label+caption"))
    assert sel.keys[0] == reviewed
    row = labels.filter(labels["key"] == sorted(reviewed)[0]).to_dicts()[0]
    text = TextTemplate("label+caption").render("A caption.", {}, sel.labels[row["key"]])
    assert text == f"{row['primary_label']}, {row['secondary_label']}: A caption."
    with pytest.raises(ValueError, match="unknown field"):
        TextTemplate("{caption} {doi}")


def test_resume_after_kill_9(dataset, tmp_path):
    run = tmp_path / "killed"
    cmd = [str(Path(sys.executable).parent / "biomedica"), "train", str(dataset), "--model",
           TINY_MODEL, "--batch-size", "8", "--samples-per-epoch", "32", "--epochs", "4",
           "--workers", "1", "--log-every", "1", "--lr", "5e-4", "--warmup", "0", "--no-split",
           "--subset", FEW, "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not (run / "checkpoints" / "epoch_1.pt").is_file():
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.time() < deadline
        time.sleep(0.2)
    time.sleep(1.0)  # kill it somewhere in epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (run / "checkpoints").glob("epoch_[0-9]*.pt"))
    assert "epoch_4.pt" not in done
    # as a kill in the middle of a save leaves it (the killed process named as its owner)
    (run / "checkpoints" / f"{TMP_PREFIX}epoch_9.pt.{proc.pid}").write_bytes(b"half a file")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming" in (run / "out.log").read_text()
    assert "epochs 1 -> 4" in r.stdout or "epochs 2 -> 4" in r.stdout or \
        "epochs 3 -> 4" in r.stdout, r.stdout
    meta = checkpoint_meta(run / "checkpoints" / LATEST)
    assert meta["epoch"] == 4 and meta["step"] == 16
    steps = [s for s, _ in read_metrics(run)]
    assert steps == list(range(16))  # every step logged once the resumed run is done
    assert not list(run.rglob(f"{TMP_PREFIX}*"))


def test_other_settings_in_the_same_run_are_refused(dataset, tmp_path):
    run = tmp_path / "run"
    train(_config(dataset, run, epochs=1, samples_per_epoch=16, tensorboard=True))
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    with pytest.raises(TrainError, match="lr"):
        train(_config(dataset, run, epochs=1, samples_per_epoch=16, lr=1e-3))
    r = train(_config(dataset, run, epochs=1, samples_per_epoch=16, lr=1e-3, fresh=True))
    assert r.start_epoch == 0 and r.steps == 2


def test_streams_over_http_from_biomedica_serve(dataset, tmp_path):
    import socket

    import uvicorn

    from biomedica_kit.serve.app import create_app
    from biomedica_kit.serve.indexer import index_dataset

    served = tmp_path / "served"
    shutil.copytree(dataset, served)
    index_dataset(served)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(create_app(served), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        local = tmp_path / "local"
        local.mkdir()
        # a local copy of the tables only: every shard byte comes over HTTP
        for part in ("manifest.json", "metadata", "splits", "report"):
            src = served / part
            (shutil.copytree if src.is_dir() else shutil.copy)(src, local / part)
        run = tmp_path / "run"
        r = CliRunner().invoke(main, [
            "train", str(local), "--model", TINY_MODEL, "--batch-size", "8",
            "--samples-per-epoch", "16", "--workers", "0", "--log-every", "1",
            "--base-url", f"http://127.0.0.1:{port}", "--out", str(run)])
        assert r.exit_code == 0, r.output
        assert "2 steps" in r.output
        assert not list(local.glob("shards/*"))
        assert len(read_metrics(run)) == 2
        assert "val_loss" in (run / "checkpoints" / "results.jsonl").read_text()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_two_ranks_under_torchrun(dataset, tmp_path):
    """DDP as on several GPUs, with gloo on the CPU: the same command, two processes."""
    import os

    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node",
           "2", str(Path(sys.executable).parent / "biomedica"), "train",
           str(dataset), "--model", TINY_MODEL, "--batch-size", "4", "--samples-per-epoch",
           "32", "--epochs", "2", "--workers", "1", "--log-every", "1", "--lr", "5e-4",
           "--out", str(run)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("run ") == 1  # only rank 0 reports
    assert "8 steps, 64 samples" in r.stdout  # 32 per epoch over 2 ranks of batch 4
    steps = [s for s, _ in read_metrics(run)]
    assert steps == list(range(8))
    meta = checkpoint_meta(run / "checkpoints" / "epoch_2.pt")
    assert meta["epoch"] == 2 and meta["step"] == 8
