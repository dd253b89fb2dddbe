"""Distributors: run the per-package worker over many packages, yielding results in input order.

img2dataset's cut: the worker (:func:`biomedica_kit.etl.worker.process_package`) is a pure
function of one package, and a distributor only decides *where* it runs. Both distributors keep
a bounded window of packages in flight (memory stays flat however long the list) and hand
results back in input order, so the single writer produces the same shards whichever worker
finished first.

* :func:`run_local`: a local process pool (the default).
* :func:`run_ray`: Ray tasks on a local runtime (``address="local"``) or a cluster. Workers
  read packages by path, so on a multi-node cluster the source (or the download cache) must
  sit on a file system every node mounts at the same path.

Worker processes never outlive the build and never hold its dataset lock:

* they are forked from a *fork server* (:mod:`multiprocessing.forkserver`), a fresh interpreter
  started with only the descriptors it needs, so the ``flock`` the writer holds
  (:func:`biomedica_kit.dataset.lock.dataset_lock`) is not inherited;
* the fork server exits when the main process dies (stdlib: it watches a pipe), and each worker
  asks the kernel for ``SIGKILL`` when its parent dies (``PR_SET_PDEATHSIG`` on Linux) and
  exits at once if the main process is already gone, so a ``kill -9`` (or an OOM kill) of the
  main process takes its workers with it instead of leaving them blocked on a pipe.

A worker that dies (killed for memory, a segfault in a C library) breaks the process pool. The
packages that were in flight are then retried once, each alone in a fresh process, so the one
that killed its worker is known; a package that kills its worker again is handed to
``on_death`` (the build records it as failed, reason ``worker_died``) and the run goes on.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from biomedica_kit.base.atomic import pid_alive

if TYPE_CHECKING:
    from biomedica_kit.ingest.sources import PackageRef

__all__ = ["OnDeath", "Worker", "describe_exit", "ordered_window", "run_local", "run_ray"]

C = TypeVar("C")
R = TypeVar("R")
T = TypeVar("T")
_END = object()
#: A worker: one package and the build config in, one result out (must be picklable).
Worker = Callable[["PackageRef", C], R]
#: What to yield for a package whose worker died twice: ``(package, detail)`` -> a result.
OnDeath = Callable[["PackageRef", str], R]
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class _WithConfig(Generic[C, R]):
    """``worker(ref, cfg)`` as a one-argument callable that pickles to pool processes."""

    def __init__(self, worker: Worker, cfg: C) -> None:
        self.worker, self.cfg = worker, cfg

    def __call__(self, ref: PackageRef) -> R:
        return self.worker(ref, self.cfg)


def _die_with_parent(main_pid: int) -> None:
    """Worker initializer: be killed when the parent dies; exit if the build is already gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent (the fork server) may have died before prctl took effect: it exits only when
    # the main process is gone, so check that one.
    if not pid_alive(main_pid):
        os._exit(1)


def _context(worker: Callable[..., Any]) -> BaseContext:
    """The fork-server context (spawn where there is none), preloading the worker's module in
    the server so each forked worker starts with lxml, Pillow... already imported."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    module = getattr(worker, "__module__", None)
    if module and module != "__main__":
        # Only read when the server starts (once per process); later calls change nothing.
        ctx.set_forkserver_preload([module])
    return ctx


def describe_exit(code: int | None) -> str:
    """A process exit code in words: ``killed by SIGKILL``, ``exit code 3``."""
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _run_alone(fn: Callable[[T], R], item: T, conn: Connection, main_pid: int) -> None:
    """Body of an isolated retry process: run ``fn(item)`` and send back the outcome."""
    _die_with_parent(main_pid)
    try:
        out: tuple[str, Any] = ("ok", fn(item))
    except BaseException as exc:  # noqa: BLE001 - re-raised in the parent
        out = ("error", exc)
    conn.send(out)
    conn.close()


def _retry_alone(ctx: BaseContext, fn: Callable[[T], R], item: T) -> tuple[bool, Any]:
    """Run ``fn(item)`` alone in a fresh process: ``(True, result)``, or ``(False, how the
    process died)``. An exception raised by ``fn`` is raised here."""
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_run_alone, args=(fn, item, send, os.getpid()), daemon=True)
    proc.start()
    send.close()
    try:
        status, value = recv.recv()
    except EOFError:  # it died before sending anything
        proc.join()
        return False, describe_exit(proc.exitcode)
    finally:
        recv.close()
    proc.join()
    if status == "error":
        raise value
    return True, value


def run_local(refs: Iterable[PackageRef], cfg: C, workers: int | None, *, worker: Worker,
              on_death: OnDeath | None = None) -> Iterator[R]:
    """Run ``worker`` over packages on local processes, yielding results in input order.

    ``workers <= 1`` runs in this process (no pool start-up, easy to debug). At most
    ``4 * workers`` packages are in flight. When a worker process dies, the packages in flight
    are retried once, each in a fresh process of its own; one whose worker dies again yields
    ``on_death(ref, detail)`` (without ``on_death``, :class:`BrokenProcessPool` is raised).
    """
    workers = workers or os.cpu_count() or 1
    if workers <= 1:
        for r in refs:
            yield worker(r, cfg)
        return
    ctx = _context(worker)
    fn: _WithConfig[C, R] = _WithConfig(worker, cfg)
    it = iter(refs)

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                   initializer=_die_with_parent, initargs=(os.getpid(),))

    pool = new_pool()
    window: deque[tuple[PackageRef, Future]] = deque()
    try:
        while True:
            while len(window) < 4 * workers and (nxt := next(it, _END)) is not _END:
                window.append((nxt, pool.submit(fn, nxt)))
            if not window:
                return
            ref, fut = window.popleft()
            try:
                result = fut.result()
            except BrokenProcessPool:
                # A worker died; any package in flight may be the one that killed it.
                pending = [(ref, fut), *window]
                window.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                yield from _recover(ctx, fn, pending, workers, on_death)
                pool = new_pool()
                continue
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _recover(ctx: BaseContext, fn: Callable[[PackageRef], R],
             pending: list[tuple[PackageRef, Future]], workers: int,
             on_death: OnDeath | None) -> Iterator[R]:
    """Results of the packages in flight when the pool broke, in order: those finished before
    the break as they are, the others retried alone (``workers`` at a time)."""
    def settle(entry: tuple[PackageRef, Future]) -> R:
        ref, fut = entry
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            return fut.result()
        ok, value = _retry_alone(ctx, fn, ref)
        if ok:
            return value
        if on_death is None:
            raise BrokenProcessPool(f"the worker died twice on {ref.name}: {value}")
        return on_death(ref, f"the worker process died twice on this package ({value}), "
                             "e.g. killed for memory")

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="retry") as threads:
        yield from threads.map(settle, pending)


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
            num_cpus: int | None = None, window: int | None = None,
            on_death: OnDeath | None = None) -> Iterator[R]:
    """Run ``worker`` over packages as Ray tasks, yielding results in input order.

    ``address="local"`` starts a local Ray runtime (``num_cpus`` CPUs, no dashboard) and shuts
    it down afterwards; any other value is passed to ``ray.init(address=...)`` (e.g. ``auto`` or
    ``ray://head:10001``). When Ray is already initialised in this process it is used as is.
    At most ``window`` tasks (default: twice the cluster's CPUs) are in flight. A task whose
    worker process dies is retried once by Ray; a second death yields ``on_death(ref, detail)``.
    """
    import ray  # optional dependency (pip install 'biomedica-kit[ray]')
    from ray.exceptions import OutOfMemoryError, WorkerCrashedError

    started = False
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    pending: deque = deque()
    try:
        task = ray.remote(max_retries=1)(worker)
        window = window or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        cfg_ref = ray.put(cfg)  # shipped once, not with every task
        it = iter(refs)
        for r in it:
            pending.append((r, task.remote(r, cfg_ref)))
            if len(pending) >= window:
                break
        while pending:
            # Wait on the oldest task only: results are consumed in input order, and the tasks
            # behind it keep running meanwhile.
            ref, obj = pending[0]
            ray.wait([obj], num_returns=1)
            pending.popleft()
            try:
                result = ray.get(obj)
            except (WorkerCrashedError, OutOfMemoryError) as exc:
                if on_death is None:
                    raise
                result = on_death(ref, f"the Ray worker died twice on this package "
                                       f"({type(exc).__name__})")
            yield result
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, task.remote(nxt, cfg_ref)))
    finally:
        for _, p in pending:  # the consumer stopped early (error or interrupt)
            ray.cancel(p)
        if started:
            ray.shutdown()
