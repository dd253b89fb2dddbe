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
* each worker watches a pipe whose only write end the main process holds: when the main
  process dies, however it dies (``kill -9``, an OOM kill, SIGTERM, SIGHUP), the kernel closes
  that end and the worker exits at once. (The stdlib alone keeps them: every worker holds the
  write ends of its own call queue and of the fork server's alive pipe, so neither the workers
  nor the fork server ever see EOF, and a kernel parent-death signal would name the fork
  server, not the main process.)

A worker that dies (killed for memory, a segfault in a C library) breaks the process pool. The
packages that were in flight are then retried once, each alone in a fresh process, so the one
that killed its worker is known; a package that kills its worker again is handed to
``on_death`` (the build records it as failed, reason ``worker_died``) and the run goes on.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import suppress
from itertools import islice
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from typing import Any, Generic, TypeVar

__all__ = ["OnDeath", "Worker", "describe_exit", "ordered_window", "run_local", "run_ray"]

C = TypeVar("C")
R = TypeVar("R")
T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - an item (a package)
_END = object()
_Context = ForkServerContext | SpawnContext
#: A worker: one item (a package) and the build config in, one result out (picklable).
Worker = Callable[[I, C], R]
#: What to yield for an item whose worker died twice: ``(item, detail)`` -> a result.
OnDeath = Callable[[I, str], R]


#: In a pool process: one flag per window slot, set when that slot's package starts.
_started: Any = None


class _Task(Generic[C, R]):
    """``worker(ref, cfg)`` for pool processes, called with ``(slot, ref)``: it first flags
    ``slot`` as started, so after a worker death the packages that had not started are known
    innocent."""

    def __init__(self, worker: Worker, cfg: C) -> None:
        self.worker, self.cfg = worker, cfg

    def __call__(self, job: tuple[int, Any]) -> R:
        slot, ref = job
        if _started is not None:
            _started[slot] = 1
        return self.worker(ref, self.cfg)


def _init_worker(alive: Connection, started: Any) -> None:
    """Pool process initializer: keep the start flags, exit when the main process dies."""
    global _started
    _started = started
    _watch_main(alive)


def _watch_main(alive: Connection) -> None:
    """Worker initializer: exit at once when the main process dies.

    ``alive`` is the read end of a pipe whose write end only the main process holds; reading
    it returns (EOF) exactly when that process is gone.
    """
    def wait() -> None:
        with suppress(EOFError, OSError):
            alive.recv_bytes()
        os._exit(1)

    threading.Thread(target=wait, name="watch-main", daemon=True).start()


def _context(preload: Sequence[str]) -> _Context:
    """The fork-server context (spawn where there is none), with ``preload`` (module names)
    imported in the server, so each forked worker starts with them already imported."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # Only read when the server starts (once per process); later calls change nothing.
    ctx.set_forkserver_preload(list(preload))
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


def _run_alone(fn: Callable[[T], R], item: T, conn: Connection, alive: Connection) -> None:
    """Body of an isolated retry process: run ``fn(item)`` and send back the outcome."""
    _watch_main(alive)
    try:
        out: tuple[str, Any] = ("ok", fn(item))
    except BaseException as exc:  # noqa: BLE001 - re-raised in the parent
        out = ("error", exc)
    conn.send(out)
    conn.close()


def _retry_alone(ctx: _Context, fn: Callable[[T], R], item: T, alive: Connection
                 ) -> tuple[bool, Any]:
    """Run ``fn(item)`` alone in a fresh process: ``(True, result)``, or ``(False, how the
    process died)``. An exception raised by ``fn`` is raised here."""
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_run_alone, args=(fn, item, send, alive), daemon=True)
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


def run_local(refs: Iterable[I], cfg: C, workers: int | None, *, worker: Worker[I, C, R],
              on_death: OnDeath[I, R] | None = None, preload: Sequence[str] = ()
              ) -> Iterator[R]:
    """Run ``worker`` over packages on local processes, yielding results in input order.

    ``workers <= 1`` runs in this process (no pool start-up, easy to debug). At most
    ``4 * workers`` packages are in flight. When a worker process dies, the packages that had
    started are retried once, each alone in a fresh process, and the others go to a new pool;
    one whose worker dies again yields ``on_death(ref, detail)`` (without ``on_death``,
    :class:`BrokenProcessPool` is raised). ``preload``: modules the fork server imports once
    for all workers (default: the worker's module).
    """
    workers = workers or os.cpu_count() or 1
    if workers <= 1:
        for r in refs:
            yield worker(r, cfg)
        return
    modules = preload or [m for m in [getattr(worker, "__module__", None)]
                          if m and m != "__main__"]
    yield from _LocalRun(worker, cfg, workers, on_death, modules).results(refs)


class _LocalRun(Generic[C, R]):
    """One :func:`run_local` over a process pool, with its recovery from worker deaths."""

    def __init__(self, worker: Worker, cfg: C, workers: int, on_death: OnDeath | None,
                 preload: Sequence[str]) -> None:
        self.ctx = _context(preload)
        self.task: _Task[C, R] = _Task(worker, cfg)
        self.workers = workers
        self.on_death = on_death
        self.size = 4 * workers
        self.started = self.ctx.Array("b", self.size, lock=False)
        self.alive, self._alive_w = self.ctx.Pipe(duplex=False)  # the write end stays here
        self.pool = self._new_pool()
        self.retries: ThreadPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=self.ctx,
                                   initializer=_init_worker,
                                   initargs=(self.alive, self.started))

    def _submit(self, slot: int, ref: Any) -> tuple[int, Any, Future, bool]:
        self.started[slot] = 0
        return slot, ref, self.pool.submit(self.task, (slot, ref)), True

    def results(self, refs: Iterable[Any]) -> Iterator[R]:
        """The results in input order; ``window`` entries are (slot, ref, future, whether the
        future is the pool's)."""
        free = deque(range(self.size))
        window: deque[tuple[int, Any, Future, bool]] = deque()
        it = iter(refs)
        try:
            while True:
                while free and (nxt := next(it, _END)) is not _END:
                    window.append(self._submit(free.popleft(), nxt))
                if not window:
                    return
                slot, _, fut, pooled = window[0]
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    if not pooled:  # a retry died again and there is no on_death
                        raise
                    window = self._recover(window)
                    continue
                window.popleft()
                free.append(slot)
                yield result
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            if self.retries is not None:
                self.retries.shutdown(wait=True, cancel_futures=True)
            self.alive.close()
            self._alive_w.close()

    def _recover(self, window: deque[tuple[int, Any, Future, bool]]
                 ) -> deque[tuple[int, Any, Future, bool]]:
        """A worker died and broke the pool: keep what had finished, retry alone (on threads,
        ``workers`` at a time) what had started, resubmit the rest to a new pool."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._new_pool()
        if self.retries is None:
            self.retries = ThreadPoolExecutor(self.workers, thread_name_prefix="retry")
        out: deque[tuple[int, Any, Future, bool]] = deque()
        for slot, ref, fut, pooled in window:
            if not pooled or (fut.done() and not fut.cancelled() and fut.exception() is None):
                out.append((slot, ref, fut, pooled))
            elif self.started[slot]:
                out.append((slot, ref, self.retries.submit(self._alone, slot, ref), False))
            else:
                out.append(self._submit(slot, ref))
        return out

    def _alone(self, slot: int, ref: Any) -> R:
        ok, value = _retry_alone(self.ctx, self.task, (slot, ref), self.alive)
        if ok:
            return value
        if self.on_death is None:
            raise BrokenProcessPool(f"the worker died twice on {getattr(ref, 'name', ref)}: "
                                    f"{value}")
        return self.on_death(ref, f"the worker process died twice on this package ({value}), "
                                  "e.g. killed for memory")


def ordered_window(pool: Executor, fn: Callable[[T], R], items: Iterable[T], size: int
                   ) -> Iterator[R]:
    """``fn`` over ``items`` on ``pool``, yielding results in input order with at most ``size``
    submitted ahead of the consumer (memory and disk stay flat however long ``items`` is)."""
    it = iter(items)
    window: deque[Future[R]] = deque(pool.submit(fn, item) for item in islice(it, size))
    while window:
        yield window.popleft().result()
        window.extend(pool.submit(fn, item) for item in islice(it, 1))


def _call(worker: Worker[I, C, R], item: I, cfg: C) -> R:
    """A Ray task body: ``worker(item, cfg)`` (Ray's tasks must be functions)."""
    return worker(item, cfg)


def run_ray(refs: Iterable[I], cfg: C, address: str = "local", *, worker: Worker[I, C, R],
            num_cpus: int | None = None, window: int | None = None,
            on_death: OnDeath[I, R] | None = None) -> Iterator[R]:
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
        task: Any = ray.remote(max_retries=1)(_call)
        window = window or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        # Shipped once, not with every task; any picklable callable can be the worker.
        worker_ref, cfg_ref = ray.put(worker), ray.put(cfg)
        it = iter(refs)
        for r in it:
            pending.append((r, task.remote(worker_ref, r, cfg_ref)))
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
                pending.append((nxt, task.remote(worker_ref, nxt, cfg_ref)))
    finally:
        for _, p in pending:  # the consumer stopped early (error or interrupt)
            ray.cancel(p)
        if started:
            ray.shutdown()
