"""The Ray distributor runs the same worker as the process pool and gives the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from mirror_server import build_mirror
from test_build_safety import DyingWorker

from biomedica_kit.base.pool import run_ray
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.verify import verify
from biomedica_kit.etl.build import BuildConfig, build
from biomedica_kit.etl.worker import worker_died
from biomedica_kit.ingest.sources import discover_local

ray = pytest.importorskip("ray", reason="Ray is the optional [ray] extra")

CFG = BuildConfig(shard_max_samples=3)


def test_ray_build_is_byte_identical_to_local(corpus, tmp_path):
    mirror = tmp_path / "mirror"
    build_mirror(corpus, mirror)
    local = build(mirror, tmp_path / "local", workers=2, progress=False, config=CFG)
    # A small local runtime started here (the distributor uses it as is, window of 3 tasks).
    # The tests folder on the workers' path: the dying worker below is defined in a test module.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})
    try:
        on_ray = build(mirror, tmp_path / "ray", progress=False, config=CFG, ray="local")
        # A package whose Ray worker process dies (twice: Ray retries it once) is recorded as
        # worker_died, the next one is built.
        refs = discover_local(corpus)[:2]
        marks = tmp_path / "marks"
        marks.mkdir()
        died, built = run_ray(refs, CFG, worker=DyingWorker({refs[0].name}, set(), marks),
                              on_death=worker_died)
    finally:
        ray.shutdown()
    assert (died.articles[0]["reason"], died.package) == ("worker_died", refs[0].name)
    assert built.package == refs[1].name and built.articles[0]["status"] != "failed"
    a, b = read_manifest(tmp_path / "local"), read_manifest(tmp_path / "ray")
    assert [(s["path"], s["sha256"]) for s in a["shards"]] == [
        (s["path"], s["sha256"]) for s in b["shards"]]
    assert a["dataset_version"] == b["dataset_version"] == local.dataset_version
    assert on_ray.samples == local.samples > 0 and verify(Path(tmp_path / "ray")).ok


def test_cli_ray_local_starts_and_stops_its_own_runtime(corpus, tmp_path):
    from click.testing import CliRunner

    from biomedica_kit.cli.main import main

    mirror = tmp_path / "mirror"
    build_mirror(corpus, mirror)
    res = CliRunner().invoke(main, ["build", "--source", str(mirror), "--out",
                                    str(tmp_path / "ds"), "--quiet", "--ray", "local",
                                    "--workers", "2", "--limit", "3"])
    assert res.exit_code == 0, res.output
    assert "3 packages processed" in res.output and not ray.is_initialized()
    assert verify(tmp_path / "ds").ok
