"""Where a study's trials run: a local process pool, or Ray (one machine or a cluster).

Both take the same jobs and yield each trial's row as it finishes. Each trial gets a
fresh process (a spawned process per trial; Ray workers exit after one call), so
no allocator, thread-pool or CUDA state carries from one trial to the next, and a
trial that dies takes only itself down.

Packing: ``runs_per_gpu = K`` lets K trials share each GPU (Ray: fractional GPUs of
1/K; local: K slots per GPU, each trial pinned to its slot's GPU with
``train.device``).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.util
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait as connection_wait

from tqdm import tqdm

from .trial import run_trial

EXECUTORS = ("local", "ray")
# Seconds a stopped study gives its running trials to finish their iteration.
STOP_GRACE = 60.0


@dataclass(frozen=True)
class Plan:
    """How many trials run at once and what each one gets.

    Attributes:
        slots: one entry per concurrent trial: the device it is pinned to (``cuda:N``)
            or None (CPU, or Ray's choice).
        cpus_per_run: CPU cores (and torch threads) per trial.
        gpus_per_run: the GPU fraction each trial asks for (0 without GPUs).
    """

    slots: tuple[str | None, ...]
    cpus_per_run: int
    gpus_per_run: float

    @property
    def concurrency(self) -> int:
        return len(self.slots)


def plan_slots(
    cpus: int,
    gpus: int = 0,
    cpus_per_run: int = 1,
    runs_per_gpu: int = 1,
    jobs: int | None = None,
) -> Plan:
    """The packing of trials onto ``cpus`` cores and ``gpus`` GPUs.

    Without GPUs: ``jobs`` trials at once (default: as many as ``cpus_per_run`` lets
    the cores hold, at least one). With GPUs: ``runs_per_gpu`` per GPU, each pinned to
    one (``cuda:0`` x K, ``cuda:1`` x K, ...), at most ``jobs`` when given.
    """
    if cpus_per_run < 1:
        raise ValueError(f"--cpus-per-run must be at least 1, got {cpus_per_run}")
    if runs_per_gpu < 1:
        raise ValueError(f"--runs-per-gpu must be at least 1, got {runs_per_gpu}")
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if gpus > 0:
        slots = tuple(f"cuda:{g}" for g in range(gpus) for _ in range(runs_per_gpu))
        if jobs is not None:
            slots = slots[:jobs]
        return Plan(slots, cpus_per_run, 1.0 / runs_per_gpu)
    count = jobs if jobs is not None else max(1, cpus // cpus_per_run)
    return Plan((None,) * count, cpus_per_run, 0.0)


def _job(job: dict, plan: Plan, slot: str | None) -> dict:
    return {**job, "threads": plan.cpus_per_run, "device": slot}


def _trial_process(conn, target: Callable[[dict], dict], job: dict) -> None:
    """Body of a trial's process: run it, send its row, and end at once."""
    # tqdm makes a multiprocessing lock for its bars on first use, and os._exit below
    # skips that lock's finalizer, so the resource tracker reported one "leaked
    # semaphore" per trial when the study ended. Only this process writes the trial's
    # bars: a thread lock is all they need.
    tqdm.set_lock(threading.RLock())
    try:
        row = target(job)
        # A study being stopped closes its end before the trial (stopped by SIGTERM
        # after its iteration) returns; the trial's state is in its folder, and the
        # rerun resumes it: nothing is lost, nothing to print.
        with contextlib.suppress(BrokenPipeError):
            conn.send(row)
    finally:
        conn.close()
        _release_ipc_objects()
        sys.stdout.flush()
        sys.stderr.flush()
    # The row is out: skip the interpreter's shutdown. It would SIGTERM and then join
    # every daemonic child still alive, among them data-loader workers of the run, which
    # ignore SIGTERM so that the main process decides how a run stops (RELIABILITY.md):
    # such a join never returns, and a study once sat idle behind it. Orphaned loader
    # workers notice the missing parent and exit by themselves.
    os._exit(0)


def _release_ipc_objects() -> None:
    """What a trial's shutdown would release, without its join of daemonic children.

    A trial stopped mid-epoch still holds its data loaders' iterators (kept alive by
    the run's reference cycles), whose queues hold named semaphores; with ``os._exit``
    they were never unlinked, and the resource tracker reported them as leaked when the
    study ended (33 for three trials). Collecting shuts the loaders down as usual (their
    workers told to exit); the finalizers multiprocessing runs first at a normal exit
    (priority >= 0: semaphore unlinks, queue closes) release whatever is still referenced.
    """
    gc.collect()
    run_finalizers = getattr(multiprocessing.util, "_run_finalizers", None)
    if run_finalizers is not None:  # the stdlib's exit step; absent, only a warning is lost
        run_finalizers(0)


def run_local(
    jobs: Sequence[dict], plan: Plan, target: Callable[[dict], dict] = run_trial
) -> Iterator[dict]:
    """Trials in ``plan.concurrency`` fresh processes at a time (spawned, one trial
    each); yields rows as trials finish.

    Each trial is a process of its own that sends its row through a pipe and exits; a
    process that dies before sending makes a failed row. ``target`` runs one job (the
    study's :func:`run_trial`; tests give another).
    """
    pending = list(jobs)
    free = list(plan.slots)
    running: dict = {}  # parent end of the pipe -> (job, slot, process)
    ctx = multiprocessing.get_context("spawn")  # no forked torch / CUDA state
    try:
        while pending or running:
            while pending and free:
                slot, job = free.pop(0), pending.pop(0)
                parent, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_trial_process, args=(child, target, _job(job, plan, slot))
                )
                proc.start()
                child.close()  # the parent's copy: EOF on `parent` once the trial is gone
                running[parent] = (job, slot, proc)
            for conn in connection_wait(list(running)):
                job, slot, proc = running.pop(conn)
                try:
                    row, error = conn.recv(), None
                except EOFError:
                    proc.join()
                    row, error = None, RuntimeError(f"exit code {proc.exitcode}")
                conn.close()
                _reap(proc)
                free.append(slot)
                yield _result(job, None if row is None else (lambda r=row: r), error)
    finally:
        for conn in running:
            conn.close()
        _stop([proc for _, _, proc in running.values()])


def _reap(proc, grace: float = 30) -> None:
    """Wait for a trial's process to end; kill it if it has not after ``grace`` s."""
    _stop([proc], grace, terminate=False)


def _stop(procs: Sequence, grace: float = STOP_GRACE, terminate: bool = True) -> None:
    """End trial processes: SIGTERM to all at once (each stops after its iteration, its
    last complete epoch kept), then SIGKILL whatever is left after ``grace`` s in all, or
    at once when this wait is itself interrupted (a second Ctrl-C)."""
    try:
        if terminate:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
        deadline = time.monotonic() + grace
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()


def _result(job: dict, get: Callable[[], dict] | None, err: BaseException | None) -> dict:
    """The row of a finished future; a worker that died is a failed trial."""
    if get is not None:
        return get()
    base = {k: job[k] for k in ("key", "setting", "variant", "seed", "task")}
    what = f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__
    return {**base, "status": "failed", "error": f"the trial's process died ({what})",
            "config": job["config"]}  # fmt: skip


def ray_missing_line() -> str:
    return (
        "--executor ray needs Ray: pip install 'reid-dhm[study]' (or pip install 'ray>=2.40'); "
        "--executor local runs the study without it"
    )


def run_ray(
    jobs: Sequence[dict], plan: Plan, address: str | None = None, cpus: int | None = None,
    gpus: int = 0,
) -> Iterator[dict]:  # fmt: skip
    """Trials as Ray tasks with ``plan``'s resources each; yields rows as they finish.

    ``address`` (or ``RAY_ADDRESS``) joins a running cluster, whose machines must see
    the same Python environment and output folder; without one a local Ray instance is
    started with ``cpus`` cores and ``gpus`` GPUs.
    """
    try:
        import ray
    except ImportError:
        raise ImportError(ray_missing_line()) from None
    address = address or os.environ.get("RAY_ADDRESS") or None
    local = {} if address else {"num_cpus": cpus, "num_gpus": gpus}
    ray.init(address=address, include_dashboard=False, log_to_driver=False, **local)
    try:
        task = ray.remote(max_calls=1)(run_trial).options(
            num_cpus=plan.cpus_per_run, num_gpus=plan.gpus_per_run
        )
        refs = {task.remote(_job(job, plan, None)): job for job in jobs}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            job = refs.pop(done[0])
            try:
                row = ray.get(done[0])
            except Exception as err:  # noqa: BLE001 - a worker that died (OOM kill ...)
                row = _result(job, None, err)
            yield row
    finally:
        ray.shutdown()


__all__ = ["EXECUTORS", "Plan", "plan_slots", "ray_missing_line", "run_local", "run_ray"]
