"""Distributors: run the per-package worker over many packages, yielding results in input order.

img2dataset's cut: the worker (:func:`biomedica_kit.etl.build.process_package`) is a pure function
of one package, and a distributor only decides *where* it runs. Both distributors keep a bounded
window of packages in flight (memory stays flat however long the list) and hand results back in
input order, so the single writer produces the same shards whichever worker finished first.

* :func:`run_local`: a local process pool (the default).
* :func:`run_ray`: Ray tasks on a local runtime (``address="local"``) or a cluster. Workers
  read packages by path, so on a multi-node cluster the source (or the download cache) must
  sit on a file system every node mounts at the same path.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from biomedica_kit.ingest.sources import PackageRef

C = TypeVar("C")
R = TypeVar("R")
T = TypeVar("T")
_END = object()
#: A worker: one package and the build config in, one result out (must be picklable).
Worker = Callable[["PackageRef", C], R]


class _WithConfig(Generic[C, R]):
    """``worker(ref, cfg)`` as a one-argument callable that pickles to pool processes."""

    def __init__(self, worker: Worker, cfg: C) -> None:
        self.worker, self.cfg = worker, cfg

    def __call__(self, ref: PackageRef) -> R:
        return self.worker(ref, self.cfg)


def run_local(refs: Iterable[PackageRef], cfg: C, workers: int | None, *,
              worker: Worker) -> Iterator[R]:
    """Run ``worker`` over packages on local processes, yielding results in input order.

    ``workers <= 1`` runs in this process (no pool start-up, easy to debug). At most
    ``4 * workers`` packages are in flight.
    """
    workers = workers or os.cpu_count() or 1
    if workers <= 1:
        for r in refs:
            yield worker(r, cfg)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from ordered_window(pool, _WithConfig(worker, cfg), refs, 4 * workers)


def ordered_window(pool: Executor, fn: Callable[[T], R], items: Iterable[T], size: int
                   ) -> Iterator[R]:
    """``fn`` over ``items`` on ``pool``, yielding results in input order with at most ``size``
    submitted ahead of the consumer (memory and disk stay flat however long ``items`` is)."""
    window: deque[Future] = deque()
    it = iter(items)
    for item in it:
        window.append(pool.submit(fn, item))
        if len(window) >= size:
            break
    while window:
        yield window.popleft().result()
        nxt = next(it, _END)
        if nxt is not _END:
            window.append(pool.submit(fn, nxt))


def run_ray(refs: Iterable[PackageRef], cfg: C, address: str = "local", *, worker: Worker,
            num_cpus: int | None = None, window: int | None = None) -> Iterator[R]:
    """Run ``worker`` over packages as Ray tasks, yielding results in input order.

    ``address="local"`` starts a local Ray runtime (``num_cpus`` CPUs, no dashboard) and shuts
    it down afterwards; any other value is passed to ``ray.init(address=...)`` (e.g. ``auto`` or
    ``ray://head:10001``). When Ray is already initialised in this process it is used as is.
    At most ``window`` tasks (default: twice the cluster's CPUs) are in flight.
    """
    import ray  # optional dependency (pip install 'biomedica-kit[ray]')

    started = False
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    pending: deque = deque()
    try:
        task = ray.remote(worker)
        window = window or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        cfg_ref = ray.put(cfg)  # shipped once, not with every task
        it = iter(refs)
        for r in it:
            pending.append(task.remote(r, cfg_ref))
            if len(pending) >= window:
                break
        while pending:
            # Wait on the oldest task only: results are consumed in input order, and the tasks
            # behind it keep running meanwhile.
            ray.wait([pending[0]], num_returns=1)
            yield ray.get(pending.popleft())
            nxt = next(it, None)
            if nxt is not None:
                pending.append(task.remote(nxt, cfg_ref))
    finally:
        for p in pending:  # the consumer stopped early (error or interrupt)
            ray.cancel(p)
        if started:
            ray.shutdown()
