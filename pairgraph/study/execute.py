"""Running a study: each job trains (or resumes) one run and stores it in the results folder; the
scheduler starts sweeps first, each arm's seeds once its sweep is complete, in the study file's order,
in this process or in several worker processes."""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from pairgraph.compiler.pipeline import compile as compile_pair
from pairgraph.config import TRAIN, PairSpec, load_spec, with_defaults
from pairgraph.config.diff import spec_diff
from pairgraph.errors import Interrupted, PairgraphError, one_line
from pairgraph.study.plan import ArmPlan, Job, only_longer, plan_study
from pairgraph.study.records import best_val, read_json, read_spec_yaml
from pairgraph.study.schema import Study, lr_tag, run_folder
from pairgraph.training import train
from pairgraph.training.runs import RunInUse, interrupted, lock_run, sigterm_handled, stored_spec

#: how often a job waiting for a guide that another process trains looks for it in the cache
GUIDE_POLL_SECONDS = 5.0
#: files copied from a run folder into the results (never checkpoints/ or tb/)
RUN_FILES = ("summary.json", "metrics.jsonl", "spec.yaml", "env.json", "test_predictions.json", "continued_from.json")


def _diverged(e: PairgraphError) -> bool:
    m = e.message
    return "became non-finite" in m or bool(re.search(r"loss became (nan|inf|-inf)", m))


def guide_run_dir(guide_weights: str, spec_name: str) -> Path | None:
    """The run folder in which the trainer trained a cached guide (``weights: train``), if it is there."""
    p = Path(guide_weights)
    if p.parent.name != "guides" or "-" not in p.stem:
        return None
    key = p.stem.rsplit("-", 1)[1]
    # the pair that trained it named the folder; another pair may share the cached guide (same key)
    found = [p.parent / "runs" / f"{spec_name}-guide" / key, *sorted(p.parent.glob(f"runs/*-guide/{key}"))]
    return next((d for d in found if (d / "summary.json").is_file()), None)


def _copy_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if not (src / name).is_file():
            continue
        if name == "metrics.jsonl":  # every step's per-pair terms: gzip (mtime 0, so the same run gives the same bytes)
            (dst / f"{name}.gz").write_bytes(gzip.compress((src / name).read_bytes(), mtime=0))
        else:
            shutil.copyfile(src / name, dst / name)


def _commit(tmp: Path, out: Path) -> None:
    """Put a finished results folder in place with one rename (a directory: not pairgraph.paths.atomic_write)."""
    if out.exists():  # an incomplete earlier copy (done runs are never re-executed)
        shutil.rmtree(out)
    os.replace(tmp, out)


def _store(job: Job, run_dir: Path, spec: PairSpec, record: dict[str, Any], diverged: str | None = None) -> None:
    """Copy a run folder (minus checkpoints/tb/build) into the results, atomically (one rename)."""
    out = Path(job.out)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    _copy_files(run_dir, tmp)
    if diverged is not None:
        if not (tmp / "spec.yaml").exists():
            (tmp / "spec.yaml").write_text(yaml.safe_dump(spec.resolved(), sort_keys=False))
        (tmp / "summary.json").unlink(missing_ok=True)
        (tmp / "diverged.json").write_text(json.dumps({"error": diverged, **record}, indent=2) + "\n")
    else:
        env = read_json(run_dir / "env.json") or {}
        gw = env.get("guide_weights")
        if gw and spec.guide.weights == TRAIN:
            gdir = guide_run_dir(str(gw), spec.name)
            if gdir is not None:
                _copy_files(gdir, tmp / "guide")
    (tmp / "study.json").write_text(json.dumps(record, indent=2) + "\n")
    _commit(tmp, out)


def train_job(job: Job) -> tuple[Path, PairSpec, bool]:
    """Train (or resume, or just pick up) the run of ``job``; returns (run folder, spec, resumed)."""
    spec = load_spec(job.spec, list(job.overrides))
    runs_dir = Path(job.runs_dir)
    run_id = run_folder(job.lr, job.seed)
    run_dir = runs_dir / spec.name / run_id
    if run_dir.exists():
        probe = lock_run(run_dir)  # RunInUse: another process trains it (the study started twice): leave it be
        try:
            stored = read_spec_yaml(run_dir / "spec.yaml")
            if stored is not None and spec_diff(with_defaults(stored), spec.resolved()):
                shutil.rmtree(run_dir)  # an old run of another configuration
            elif (run_dir / "summary.json").is_file():
                return run_dir, spec, False  # finished, but was not copied into the results
            elif not (run_dir / "checkpoints" / "last_state.pt").is_file():
                shutil.rmtree(run_dir)  # crashed before its first checkpoint: start again
        finally:
            probe.release()
    if not run_dir.exists() and job.continues:
        continue_shorter(Path(job.continues) / spec.name / run_id, run_dir, spec)
    resume = run_dir if (run_dir / "checkpoints" / "last_state.pt").is_file() else None
    compiled = compile_pair(spec, run_dir / "build", render=False, notify=None)
    train(compiled, runs_dir=runs_dir, run_id=run_id, resume=resume, progress=False)
    return run_dir, spec, resume is not None


def continue_shorter(src: Path, dst: Path, spec: PairSpec) -> bool:
    """Start run folder ``dst`` as a copy of ``src`` — the same run (arm, lr, seed) of the cell a
    ``when_unconverged`` cell is gated on — when ``src`` finished and differs from ``spec`` only in being
    shorter. Resuming the copy for the remaining steps computes what a fresh run would (a resume is exact:
    tests/test_study_continue.py), at the cost of those steps only. The copy names its origin in
    ``continued_from.json`` (kept in the results). Returns whether it copied (False: the run starts fresh)."""
    summary, stored = read_json(src / "summary.json"), stored_spec(src) if (src / "spec.yaml").is_file() else None
    if summary is None or stored is None or not (src / "checkpoints" / "last_state.pt").is_file():
        return False  # not a finished run
    if not only_longer(stored, spec) or summary.get("steps") != stored["train"]["steps"]:
        return False  # it computes something else (or stopped short of its own length)
    tmp = dst.with_name(f".{dst.name}.continuing")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".lock", "summary.json", "test_predictions.json"))
    origin = {"run": str(src), "step": summary["steps"], "steps": spec.train.steps}
    (tmp / "continued_from.json").write_text(json.dumps(origin, indent=2) + "\n")
    os.replace(tmp, dst)
    return True


def execute_job(job: Job) -> dict[str, Any]:
    """Run one job and store it; never raises for a failed run (the result says what happened)."""
    t0 = time.time()
    record = {"study": job.study, "cell": job.cell, "arm": job.arm, "phase": job.phase, "lr": job.lr,
              "seed": job.seed}
    if job.threads is not None:
        record["threads"] = job.threads
    try:
        with _threads(job.threads):
            run_dir, spec, resumed = train_job(job)
    except RunInUse as e:
        return {"status": "busy", "error": str(e).split(" — ")[0]}
    except Interrupted:
        _exit_if_orphaned()  # a worker whose study process died: its run checkpointed, nothing is left to do
        raise  # Ctrl-C or SIGTERM stops the study (the run kept its checkpoint), not just this run
    except PairgraphError as e:
        if _diverged(e):
            spec = load_spec(job.spec, list(job.overrides))
            run_dir = Path(job.runs_dir) / spec.name / run_folder(job.lr, job.seed)
            _store(job, run_dir, spec, {**record, "wall_seconds": round(time.time() - t0, 2)}, diverged=str(e))
            return {"status": "diverged", "error": str(e)}
        return {"status": "failed", "error": str(e)}
    except Exception as e:  # noqa: BLE001 - one failed run must not stop the study
        return {"status": "failed", "error": one_line(e),
                "traceback": "".join(traceback.format_exception(e))[-4000:]}
    wall = time.time() - t0
    _store(job, run_dir, spec, {**record, "wall_seconds": round(wall, 2), "resumed": resumed})
    return {"status": "done", "summary": read_json(Path(job.out) / "summary.json") or {}, "wall": wall}


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch threads (an arm's ``threads``), then as before."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _exit_if_orphaned() -> None:
    """In a study's worker process whose parent has died, exit now: no one will read this result, and the
    worker would otherwise wait on the job queue forever."""
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(143)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the study process dies, even by SIGKILL, so that no worker is left
    training, or idling forever on the job queue, without it; its run checkpoints and stops as any
    SIGTERM'd run does, and then exits. Elsewhere nothing (the study's own SIGTERM and Ctrl-C still stop the
    workers)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    _exit_if_orphaned()  # the parent died before prctl took effect


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class StudyOutcome:
    """What one ``pairgraph study`` invocation did."""

    trained: int = 0
    diverged: int = 0
    failed: list[str] = field(default_factory=list)
    busy: int = 0  # runs another live process was training (the same study started twice): left to it
    chosen: dict[str, float | None] = field(default_factory=dict)  # "cell/arm" → lr


class _Scheduler:
    """The jobs that can start, in the study file's order, and what a finished job unlocks."""

    def __init__(self, plans: list[ArmPlan], echo: Callable[[str], None]):
        self.plans = plans
        self.echo = echo
        self.by_arm = {(p.cell.name, p.arm.name): p for p in plans}
        self.rank = {(p.cell.name, p.arm.name): i for i, p in enumerate(plans)}
        self.outcome = StudyOutcome()
        self.ready: deque[Job] = deque()
        self.seen: set[tuple[str, str, str, int]] = set()
        for p in plans:
            self.enqueue(p)
        self.left = sum(p.counts()["left"] for p in plans)
        self.count = 0

    def enqueue(self, p: ArmPlan) -> None:
        for phase, lr, seed in p.ready():
            job = p.job(phase, lr, seed)
            if job.key not in self.seen:
                self.seen.add(job.key)
                self.ready.append(job)
        jobs = sorted(self.ready, key=self._order)
        self.ready.clear()
        self.ready.extend(jobs)

    def _order(self, job: Job) -> tuple[Any, ...]:
        """The study file's order: an earlier cell's seeds go before a later cell's sweep, so a study run in
        parts finishes whole cells (stable: an arm keeps its own sweep-then-seeds order). Under ``grid: true``
        a cell goes lr by lr and seed by seed, its arms side by side, so a part run finishes whole (lr, seed)
        points of the cell."""
        p = self.by_arm[(job.cell, job.arm)]
        cell_rank = min(r for (c, _), r in self.rank.items() if c == job.cell)
        point = (job.lr, job.seed) if p.study.grid and job.phase == "sweep" else (math.inf, 0)
        return cell_rank, point, self.rank[(job.cell, job.arm)]

    def finished(self, job: Job, res: dict[str, Any]) -> None:
        """Count and report a finished job, then queue the runs it made possible."""
        self.count += 1
        self._report(job, res)
        p = self.by_arm[(job.cell, job.arm)]
        if job.phase == "sweep" and p.arm.swept and not any(p.state(lr, s) == "todo" for lr, s in p.sweep_runs()):
            lr = p.chosen()
            self.outcome.chosen[f"{job.cell}/{job.arm}"] = lr
            self.echo(f"{job.cell}/{job.arm}: sweep complete, chose lr={lr_tag(lr)}" if lr is not None
                      else f"{job.cell}/{job.arm}: every lr of the sweep diverged; no seeds to run")
        # the cell's other arms: those taking this arm's lr can start once its sweep is complete, and a
        # finished seed can make a verdict close, which adds the study's close_seeds to an arm and its baseline
        # and a cell run only when this one's baseline had not converged (when_unconverged) may now start
        for q in self.plans:
            if q.cell.name == p.cell.name or q.cell.when_unconverged == p.cell.name:
                self.enqueue(q)

    def _report(self, job: Job, res: dict[str, Any]) -> None:
        at = f"[{self.count}/{self.left}] {job.title()}"
        status = res["status"]
        if status == "done":
            self.outcome.trained += 1
            s = res.get("summary") or {}
            metric = s.get("primary_metric")
            test = (s.get("test") or {}).get(metric)
            self.echo(f"{at}: best val {best_val(s):.4f} at step {s.get('best_step')}, "
                      f"test {metric} {test if test is None else f'{test:.4g}'} ({res.get('wall', 0):.0f} s)")
        elif status == "busy":
            self.outcome.busy += 1
            self.echo(f"{at}: skipped, another process is training it ({res['error']})")
        elif status == "diverged":
            self.outcome.diverged += 1
            self.echo(f"{at}: diverged ({res['error'].split(' — ')[0]})")
        else:
            self.outcome.failed.append(f"{job.title()}: {res['error']}")
            self.echo(f"{at}: FAILED: {res['error']}")
            if res.get("traceback"):
                self.echo(res["traceback"].rstrip())


def run_study(study: Study | str | Path, jobs: int = 1, only: Iterable[str] | None = None,
              echo: Callable[[str], None] = print) -> StudyOutcome:
    """Run what is left of a study: sweeps first, each arm's seeds as soon as its sweep is complete,
    jobs taken in the study file's order of cells and arms (a later cell waits for an earlier one's seeds).

    ``jobs == 1`` trains in this process (torch's threads untouched); ``jobs > 1`` uses that many
    spawned processes with ``max(1, cores // jobs)`` torch threads each. Runs that would train the
    same guide (``guide.weights: train``) never run at the same time; once it is cached they share it.
    """
    if jobs < 1:
        raise PairgraphError(f"--jobs {jobs}: need at least 1", "pass --jobs 1 or more")
    plans = plan_study(study, only)
    sched = _Scheduler(plans, echo)
    echo(f"study {plans[0].study.name if plans else '?'}: {sched.left} runs left"
         + (f", {jobs} at a time" if jobs > 1 else ""))
    if jobs == 1:
        while sched.ready:
            job = sched.ready.popleft()
            echo(f"start {job.title()}")
            sched.finished(job, execute_job(job))
    else:
        run_parallel(sched.ready, jobs, sched.finished, echo)
    return sched.outcome


def _stop_workers(pool: futures.ProcessPoolExecutor) -> None:
    """SIGTERM every worker (a run checkpoints its step and stops; an idle worker exits), then wait for them:
    a stopped study leaves no process behind."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(OSError, ValueError):
            proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def run_parallel(ready: deque[Job], jobs: int, finished: Callable[[Job, dict[str, Any]], None],
                 echo: Callable[[str], None]) -> None:
    """Run ``ready`` (which ``finished`` may extend) in ``jobs`` spawned processes; one guide trains once."""
    threads = max(1, _cores() // jobs)
    pool = futures.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker, initargs=(threads,))
    running: dict[futures.Future[dict[str, Any]], Job] = {}
    busy: set[str] = set()
    with sigterm_handled():  # a SIGTERM to this process stops the study as Ctrl-C does
        try:
            while ready or running:
                waiting = False  # a job waits for a guide another process is training
                for job in list(ready):
                    if len(running) >= jobs:
                        break
                    training = job.guide_key is not None and not Path(job.guide_key).exists()
                    if training and job.guide_key in busy:
                        waiting = True
                        continue  # another process is training this guide right now; once it is cached, share it
                    ready.remove(job)
                    if training:
                        busy.add(job.guide_key)
                    echo(f"start {job.title()} ({threads} threads)")
                    running[pool.submit(execute_job, job)] = job
                if not running:
                    break
                # the guide is cached long before the run training it ends: look again every few seconds
                done, _ = futures.wait(running, timeout=GUIDE_POLL_SECONDS if waiting else None,
                                       return_when=futures.FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: running[f].key):
                    job = running.pop(fut)
                    if job.guide_key is not None:
                        busy.discard(job.guide_key)
                    try:
                        res = fut.result()
                    except Interrupted:
                        raise  # the worker's run was stopped (Ctrl-C, SIGTERM): stop the study
                    except Exception as e:  # noqa: BLE001 - a worker that died (killed, out of memory)
                        res = {"status": "failed", "error": f"worker process failed: {one_line(e)}"}
                    finished(job, res)
        except (KeyboardInterrupt, Interrupted) as e:  # Ctrl-C, a SIGTERM to this process, a worker's run stopped
            _stop_workers(pool)
            if isinstance(e, KeyboardInterrupt):
                raise interrupted(e, "interrupted: the study stopped; each run it was training kept its last "
                                  "checkpoint", "run the same `pairgraph study` command again to resume") from None
            raise
    pool.shutdown(wait=True)
