"""The local distributor on real worker processes: input order, errors, early stops and worker
deaths (a worker that SIGKILLs itself, as the kernel's OOM killer would)."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from biomedica_kit.base import pool


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def jittery(item: int, cfg: None) -> tuple[int, int]:
    """Worker: a random short delay, then (item, this process's pid)."""
    time.sleep(random.random() / 50)
    return item, os.getpid()


def failing(item: int, cfg: None) -> int:
    if item == 3:
        raise KeyError("item 3")
    return item


class Logged:
    """Worker that logs every attempt (``<item> <pid>`` lines in ``log``) and SIGKILLs its own
    process on ``killer`` every time it runs it."""

    def __init__(self, log: Path, killer: int) -> None:
        self.log, self.killer = log, killer

    def __call__(self, item: int, cfg: None) -> int:
        with open(self.log, "a") as f:
            f.write(f"{item} {os.getpid()}\n")
        time.sleep(0.05)  # the others are in flight when the killer dies
        if item == self.killer:
            os.kill(os.getpid(), signal.SIGKILL)
        return item * 10


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_results_in_input_order_and_no_worker_left_after_an_early_stop():
    it = pool.run_local(range(1000), None, 3, worker=jittery)
    first = [next(it) for _ in range(60)]
    assert [i for i, _ in first] == list(range(60))
    pids = {p for _, p in first}
    assert len(pids) > 1 and os.getpid() not in pids
    it.close()  # the consumer stops (an error, Ctrl-C in the writer): queued work is dropped
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)]


def test_a_worker_exception_reaches_the_caller():
    with pytest.raises(KeyError, match="item 3"):
        list(pool.run_local(range(10), None, 2, worker=failing))


def test_without_on_death_a_second_death_raises(tmp_path):
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool, match="died twice on 2: killed by SIGKILL"):
        list(pool.run_local(range(6), None, 2, worker=Logged(tmp_path / "log", killer=2)))


def test_only_the_packages_that_had_started_are_retried_alone(tmp_path):
    log = tmp_path / "attempts"
    deaths: list[tuple[int, str]] = []
    out = list(pool.run_local(range(12), None, 2, worker=Logged(log, killer=1),
                              on_death=lambda item, why: deaths.append((item, why)) or -1))
    assert out == [0, -1, *(i * 10 for i in range(2, 12))]
    assert [i for i, _ in deaths] == [1] and "killed by SIGKILL" in deaths[0][1]
    attempts: dict[int, int] = {}
    for line in log.read_text().splitlines():
        item = int(line.split()[0])
        attempts[item] = attempts.get(item, 0) + 1
    assert attempts[1] == 2  # in the pool, then alone
    # A death costs at most one extra run per worker process: the packages running with it.
    assert sum(attempts.values()) <= 12 + 2, attempts


SCRIPT = """
import os, time
from biomedica_kit.base import pool

def slow(item, cfg):
    os.write(1, f"{os.getpid()}\\n".encode())  # one write: the two workers share the pipe
    time.sleep(60)

if __name__ == "__main__":
    for _ in pool.run_local(range(8), None, 2, worker=slow):
        pass
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP])
def test_workers_die_with_the_main_process(tmp_path, sig):
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    workers = {int(proc.stdout.readline()), int(proc.stdout.readline())}  # both are busy
    assert all(alive(p) for p in workers)
    os.kill(proc.pid, sig)
    proc.wait()
    deadline = time.monotonic() + 5
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in workers if alive(p)], f"workers outlived {sig.name}"
