"""``pairgraph train``: the training loop, with exact resume.

A run lives in ``runs/<name>/<id>/``: ``spec.yaml`` (resolved), ``env.json``, ``metrics.jsonl``,
``tb/`` (TensorBoard; ``train.log`` may add W&B), ``checkpoints/{last,best}`` and ``summary.json``. Data
order is a function of (seed, epoch), the RNG and lr-schedule states are checkpointed, so a resumed run
continues exactly where the last checkpoint stopped; metrics logged after that checkpoint are dropped
on resume. Steps are optimizer steps: with ``train.accumulate`` N each sums the gradients of N
micro-batches, and checkpoints are written only between optimizer steps.
The protocol is the paper's: evaluate on the validation split every ``eval_every`` steps and
report test metrics of the checkpoint with the lowest validation loss.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from pairgraph.compiler.guide_weights import guide_checkpoint_path, guide_key, resolve_guide_weights
from pairgraph.compiler.pipeline import CompiledPair, compile
from pairgraph.config import TRAIN, PairSpec
from pairgraph.core import distributed
from pairgraph.core.host_memory import keep_freed_memory
from pairgraph.core.loss import GuidedPair, PairOutput
from pairgraph.core.shared_taps import describe
from pairgraph.core.step import apply_gradients
from pairgraph.errors import Interrupted, PairgraphError, io_error
from pairgraph.paths import atomic_write
from pairgraph.tasks import get_task
from pairgraph.training.checkpoints import Checkpoints
from pairgraph.training.data import EpochBatches, Indexed, to_device
from pairgraph.training.evaluate import eval_subset, evaluate
from pairgraph.training.guide import cache_trained_guide, guide_to_train, guide_training_spec
from pairgraph.training.guide_cache import build_cache
from pairgraph.training.logs import Scalars, progress_bar, require, val_text
from pairgraph.training.optim import check_schedule, make_optimizer, make_scheduler
from pairgraph.training.runs import (
    RunLock,
    SigtermStop,
    Terminated,
    abandon,
    check_length,
    check_run_folder,
    claim_run,
    continue_run,
    interrupted,
    new_run_id,
    restart_clean,
    resume_claim,
    sigterm_handled,
    start_run,
    truncate_metrics,
    write_json,
)


def train(compiled: CompiledPair | PairSpec | str | Path | dict[str, Any], *, runs_dir: str | Path = "runs",
          run_id: str | None = None, resume: str | Path | None = None, progress: bool = True,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train a :class:`pairgraph.CompiledPair` (or a spec, compiled on the fly) and write its run folder
    ``runs_dir/<name>/<id>/``; returns the summary (also summary.json). A ``guide.weights: train`` guide not
    cached yet is trained first (:meth:`Trainer.run`)."""
    if not isinstance(compiled, CompiledPair):
        compiled = compile(compiled, render=False)
    return Trainer(compiled, runs_dir, run_id, resume, progress, stop_after).run()


@dataclass
class Loop:
    """What one training session carries from step to step."""

    pair: GuidedPair
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    data: dict[str, Any]
    total: int
    sched: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    lr: float = math.nan  # the lr of the last optimizer step
    state: dict[str, Any] = field(default_factory=lambda: {"best_val_loss": math.inf, "best_step": None,
                                                           "best_val": None})
    writer: Scalars | None = None
    metrics: IO[str] | None = None
    progress: Any = None
    task_id: Any = None
    last: dict[str, Any] = field(default_factory=dict)  # the last step's metrics record
    # kept on the device until the next read (Trainer._flush, once per train.log_every steps): each micro-batch's
    # (step, [loss, task, guidance]) for the NaN check, and each step's record with its output
    unchecked: list[tuple[int, Tensor]] = field(default_factory=list)
    unread: list[tuple[dict[str, Any], PairOutput]] = field(default_factory=list)


class Trainer:
    """Trains a compiled pair; ``run()`` returns the summary dict also written to summary.json.

    A ``weights: train`` guide that is not cached yet is first trained by a Trainer of its own
    (:meth:`_guide_weights`; :mod:`pairgraph.training.guide`).
    """

    def __init__(self, compiled: CompiledPair, runs_dir: str | Path = "runs", run_id: str | None = None,
                 resume: str | Path | None = None, progress: bool = True, stop_after: int | None = None,
                 verbose: bool | None = None, lock: RunLock | None = None):
        self.compiled = compiled
        self.spec: PairSpec = compiled.spec
        self.cfg = self.spec.train
        self.dist = distributed.from_env()
        self.device = distributed.pick_device(self.cfg.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if self.device.type == "cpu":  # the memory a step frees stays for the next (pairgraph.core.host_memory)
            keep_freed_memory()
        if self.dist.enabled and self.cfg.batch_size % self.dist.world:
            raise PairgraphError(f"train.batch_size {self.cfg.batch_size} does not divide over {self.dist.world} processes",
                                 "make the (global) batch size a multiple of the number of processes")
        self.task = get_task(self.spec.task)
        self.progress, self.verbose = progress, progress if verbose is None else verbose  # bar; lines and notices
        self.stop_after = stop_after
        distributed.init(self.dist, self.device)
        self.resume, self.run_id = resume is not None, run_id
        self.run_dir = Path(resume) if resume is not None else Path(runs_dir) / self.spec.name  # until claimed
        self.lock = lock  # a resume's caller may hold the run already (resume_run: locked before compiling)
        self.sigterm = SigtermStop()  # replaced by the installed handler's in run()
        self.created = False  # this run made its folder (removed again if it fails before logging a step)
        self.checkpoints = Checkpoints(self.run_dir)
        self.model: nn.Module | None = None  # the target, unwrapped (pair.target is DDP-wrapped under torchrun)

    # -- setup ------------------------------------------------------------------------------
    def _guide_weights(self) -> str | None:
        """The guide's weights; a ``weights: train`` guide not cached yet is trained here first, on the task
        alone (:func:`~pairgraph.training.guide.guide_training_spec`), and cached under its key."""
        if guide_to_train(self.spec):
            key, cache = guide_key(self.spec), guide_checkpoint_path(self.spec).parent
            compiled = compile(guide_training_spec(self.spec), out_dir=cache / f"build-{key}", render=False, notify=None)
            cache_trained_guide(self.spec, Trainer(compiled, cache / "runs", key, progress=self.progress, verbose=self.verbose).run())
        return resolve_guide_weights(self.spec)

    def _datasets(self) -> dict[str, Any]:
        data = self.task.datasets(self.cfg.seed)
        for split in ("train", "val", "test"):
            if split not in data:
                raise PairgraphError(f"task {self.spec.task['kind']!r} gave no {split!r} split", "check the task options")
        return data

    def _autocast(self) -> AbstractContextManager[Any]:
        p = self.cfg.precision
        if p == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def evaluate(self, target: nn.Module, dataset: Any, predictions: list | None = None,
                 batches: int | None = None) -> dict[str, float]:
        """Loss and task metrics on ``dataset`` (see :func:`pairgraph.training.evaluate.evaluate`)."""
        subset = eval_subset(dataset, batches, self.cfg.batch_size, self.cfg.seed)
        return evaluate(target, subset, self.task, batch_size=self.cfg.batch_size, device=self.device,
                        autocast=self._autocast, num_workers=self.cfg.num_workers, predictions=predictions)

    def _claim(self) -> None:
        """Rank 0 claims the run folder (made exclusively, locked); every rank learns which folder it is."""
        if self.dist.is_main:
            if self.resume:
                self.lock = self.lock or resume_claim(self.run_dir)
            else:
                self.run_dir, self.lock, self.created = claim_run(self.run_dir, self.run_id, new_run_id(self.spec))
        self.run_dir = Path(str(distributed.broadcast_object(str(self.run_dir))))
        self.checkpoints = Checkpoints(self.run_dir)

    def _check_can_start(self) -> bool:
        """True when resuming. Refuses a folder holding a run of another spec, a finished run asked for
        no more steps, and an uncached trained guide under torchrun; a run folder left with no resume
        checkpoint is cleared, so that starting it again never appends to what it logged."""
        check_run_folder(self.run_dir, self.spec)
        resuming = self.checkpoints.resumable
        if not resuming and self.dist.is_main and restart_clean(self.run_dir):
            print(f"{self.run_dir} holds no resume checkpoint: starting that run again from step 0 (what it "
                  "logged before is cleared)", file=sys.stderr, flush=True)
        if self.dist.enabled and self.spec.guide.weights == TRAIN and not guide_checkpoint_path(self.spec).exists():
            raise PairgraphError("guide.weights is 'train' but the trained guide is not cached, and several processes "
                                 "would train it at once", "train the guide in one process first "
                                 "(pairgraph train SPEC --set train.steps=1 caches it), then start torchrun")
        return resuming

    def _total(self, data: dict[str, Any]) -> int:
        """The run's optimizer steps: train.steps, else train.epochs (default 1) of the training split."""
        per_epoch = len(data["train"]) // (self.cfg.batch_size * self.cfg.accumulate)
        return self.cfg.steps or (self.cfg.epochs or 1) * max(per_epoch, 1)

    def _setup(self, pair: GuidedPair, guide_weights: str | None, data: dict[str, Any], resuming: bool,
               total: int) -> Loop:
        """The optimizer and scaler of the built pair; restore them when resuming, else start the run folder."""
        cfg = self.cfg
        if cfg.compile:  # the alignment under torch.compile (pairgraph.core.compiled); compiled on the first step
            pair.compile_alignment(self.device)
        if pair.guide_aliases and self.verbose and self.dist.is_main:
            print(f"guide taps computed once: {describe(pair.guide_aliases)} — each a BatchNorm that rescales its "
                  "input uniformly, so its CKA is its input's", flush=True)
        self.model = pair.target
        self.checkpoints.projectors = pair.trained_state
        opt = make_optimizer(cfg, pair.trained_parameters())
        scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        loop = Loop(pair, opt, scaler, data, total=total, sched=make_scheduler(cfg, opt, total))
        if resuming:
            st = self.checkpoints.load(self.model)
            check_length(self.run_dir, int(st["step"]), total)
            opt.load_state_dict(st["optimizer"])
            if st.get("scheduler"):  # absent in checkpoints written before train.schedule (constant lr)
                loop.sched.load_state_dict(st["scheduler"])
            if scaler is not None and st.get("scaler"):
                scaler.load_state_dict(st["scaler"])
            pair.guide_calls = int(st.get("guide_calls", 0))
            loop.step, loop.state = int(st["step"]), st["state"]
            if self.dist.is_main:
                truncate_metrics(self.run_dir, loop.step)
                continue_run(self.run_dir, self.spec)
        elif self.dist.is_main:
            start_run(self.run_dir, self.spec, self.device, guide_weights)
        if self.dist.enabled:  # every rank trains its slice of the same global batch; gradients are averaged
            pair.target = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            pair.global_batch = True
        return loop

    def _loader(self, loop: Loop, cached: bool) -> Any:
        train = loop.data["train"]
        batches = EpochBatches(len(train), self.cfg.batch_size, self.cfg.seed, start_step=loop.step,
                               rank=self.dist.rank, world=self.dist.world, accumulate=self.cfg.accumulate)
        # its own generator: making the iterator draws a seed, which must not move the global RNG that a
        # resumed run has just restored (dropout would then differ from the uninterrupted run)
        return torch.utils.data.DataLoader(Indexed(train) if cached else train, batch_sampler=batches,
                                           num_workers=self.cfg.num_workers, generator=torch.Generator())

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train (or resume); returns the summary. The pair is built by the generated module
        (``build/<name>/guided_pair.py``); each step is ``train.accumulate`` micro-batches of the pair's forward
        (the task loss + weight × alignment) and ``backward()``, then one optimizer step (:meth:`_update`)."""
        with self._held():
            data, resuming, total = self._prepare()
            guide_weights = self._guide_weights()
            pair = self.compiled.module.build(self.device, guide_weights=guide_weights)
            loop = self._setup(pair, guide_weights, data, resuming, total)
            cached = build_cache(self.spec, pair, data["train"], total, self.dist.enabled,
                                 self.progress and self.dist.is_main, self.verbose and self.dist.is_main)
            batches, n, t0 = iter(self._loader(loop, cached)), self.cfg.accumulate, time.time()
            with self._stepping(loop, resuming):
                while loop.step < loop.total:
                    loop.opt.zero_grad(set_to_none=True)
                    outs = []
                    for i in range(n):  # (x, y[, example numbers for the guide cache])
                        x, y, *index = to_device(next(batches), self.device)
                        with distributed.no_sync(pair.target, i < n - 1), self._autocast():
                            out = pair(x, y, loop.step, index=index[0]) if index else pair(x, y, loop.step)
                        self._check_finite(loop, out)
                        loss = out.loss / n  # the step's gradient: the mean over its micro-batches
                        (loop.scaler.scale(loss) if loop.scaler is not None else loss).backward()
                        outs.append(out.detached(keep_output=i == n - 1))
                    self._update(loop)
                    self._log_step(loop, outs[0] if n == 1 else PairOutput.mean(outs))
                    self._evaluate_and_save(loop)
                    if self.sigterm.requested:
                        self._save_last(loop)
                        raise Terminated
                    if self.stop_after is not None and loop.step >= self.stop_after:
                        return {"stopped_at": loop.step, "run_dir": str(self.run_dir)}
            summary = (self._finish(loop, time.time() - t0) if self.dist.is_main
                       else {"rank": self.dist.rank, "run_dir": str(self.run_dir)})
            distributed.shutdown()
            return summary

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        """A failed read or write becomes one line, SIGTERM is handled as Ctrl-C is, the run folder is held (locked)."""
        try:
            with sigterm_handled() as self.sigterm:
                yield
        except OSError as e:
            raise io_error(e, e.filename or self.run_dir) from None
        except KeyboardInterrupt as e:  # before the loop: nothing was trained
            raise interrupted(e, "interrupted before training started", f"resume with: pairgraph train --resume "
                              f"{self.run_dir}" if self.resume else "start the run again") from None
        finally:
            if self.created and sys.exc_info()[0] is not None:
                abandon(self.run_dir)
            if self.lock is not None:
                self.lock.release()

    def _prepare(self) -> tuple[dict[str, Any], bool, int]:
        """Claim the run folder, seed, load the data; returns the data, whether resuming, and the step count."""
        self._claim()
        resuming = self._check_can_start()
        torch.manual_seed(self.cfg.seed + self.dist.rank)
        require(self.cfg.log)
        data = self._datasets()  # before the run folder exists: missing data leaves no empty run behind
        total = self._total(data)
        check_schedule(self.cfg, total)
        return data, resuming, total

    @contextlib.contextmanager
    def _stepping(self, loop: Loop, resuming: bool) -> Iterator[None]:
        """The logs are open (metrics.jsonl, TensorBoard / W&B, the progress bar), SIGTERM stops at the end of a
        step (with a checkpoint of it), and Ctrl-C says which checkpoint is kept."""
        if self.dist.is_main:
            loop.writer = Scalars.open(self.cfg.log, self.run_dir, self.spec, loop.step, resuming)
        loop.metrics = open(self.run_dir / "metrics.jsonl" if self.dist.is_main else os.devnull, "a")  # noqa: SIM115
        loop.progress, loop.task_id = progress_bar(f"[bold]{self.spec.name}[/bold] {self.spec.guidance.mode}", loop.total,
                                                   loop.step, self.progress)
        self.sigterm.deferred = True
        try:
            yield
        except KeyboardInterrupt as e:
            raise self._interrupted(loop.step, e) from None
        finally:
            self.sigterm.deferred = False
            for log in (loop.metrics, loop.writer, loop.progress):
                if log is not None:
                    log.stop() if log is loop.progress else log.close()

    def _save_last(self, loop: Loop) -> None:
        self._flush(loop)  # the rows of the steps train.log_every kept on the device go with their checkpoint
        if self.dist.is_main and self.checkpoints.last_saved != loop.step:
            loop.metrics.flush()
            self.checkpoints.save("last", self.model, loop.step, self._resume_state(loop))

    def _interrupted(self, step: int, exc: KeyboardInterrupt) -> Interrupted:
        if self.checkpoints.last_saved is None:
            return interrupted(exc, f"interrupted at step {step}, before the first checkpoint of {self.run_dir}",
                               "start the run again (it saves every train.eval_every or train.checkpoint_every steps)")
        return interrupted(exc, f"interrupted at step {step}; {self.checkpoints.kept()}",
                           f"resume with: pairgraph train --resume {self.run_dir}")

    def _update(self, loop: Loop) -> None:
        """The optimizer step after the micro-batches' ``backward()`` (:mod:`pairgraph.core.step`), the lr schedule's."""
        loop.lr = loop.opt.param_groups[0]["lr"]
        apply_gradients(loop.opt, loop.pair.trained_parameters(), self.cfg.grad_clip, loop.scaler)
        loop.sched.step()
        loop.step += 1

    def _check_finite(self, loop: Loop, out: PairOutput) -> None:
        """The NaN check, without a host sync: the micro-batch's losses stay on the device until the next read
        (:meth:`_flush`), which stops the run at the first non-finite one, before any checkpoint after it."""
        parts = [out.loss.detach(), out.task_loss.detach(), out.guidance_loss.detach()]
        loop.unchecked.append((loop.step + 1, torch.stack([t.float() for t in parts])))

    def _log_step(self, loop: Loop, out: PairOutput) -> None:
        """Keep the step's record on the device; read every kept one at once every ``train.log_every`` steps, at
        every evaluation or checkpoint, and at the last step (metrics.jsonl still gets one row per step)."""
        rec: dict[str, Any] = {"step": loop.step, "guided": out.guided, "lr": loop.lr}
        if loop.pair.balance == "grad_norm" and out.guided:  # the step's adaptive scale of the alignment term
            rec["balance"] = loop.pair.last_balance
        loop.unread.append((rec, out))
        step, cfg = loop.step, self.cfg
        if (step % cfg.log_every == 0 or step % cfg.eval_every == 0 or step >= loop.total
                or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                or (self.stop_after is not None and step >= self.stop_after)):
            self._flush(loop)

    def _flush(self, loop: Loop) -> None:
        """Read the kept losses and records off the device in one transfer; raise at the first non-finite loss
        (after writing the rows before it), else write every row."""
        checks, rows = loop.unchecked, loop.unread
        loop.unchecked, loop.unread = [], []
        parts = [c for _, c in checks] + [torch.stack([t.float() for t in (o.loss, o.task_loss, o.guidance_loss,
                                                                          *o.terms.values())]) for _, o in rows]
        values = torch.cat(parts).tolist() if parts else []
        bad = next((i for i in range(len(checks)) if not math.isfinite(values[3 * i])), None)
        at = 3 * len(checks)
        for rec, out in rows:
            n = 3 + len(out.terms)
            if bad is None or rec["step"] < checks[bad][0]:
                self._write_row(loop, rec, values[at:at + n], list(out.terms))
            at += n
        if bad is not None:
            loss, task, guidance = values[3 * bad:3 * bad + 3]
            raise PairgraphError(
                f"loss became {loss} at step {checks[bad][0]} (task {task:.4g}, guidance {guidance:.4g}); "
                f"{self.checkpoints.kept()}", "lower train.lr, set train.grad_clip, or use precision fp32")

    def _write_row(self, loop: Loop, rec: dict[str, Any], values: list[float], terms: list[str]) -> None:
        """One step's row of metrics.jsonl (and its scalars in TensorBoard / W&B, and the progress bar)."""
        loss, task, guidance, *term_values = values
        task_loss = distributed.mean_over_ranks(task)  # the global batch's mean
        rec = {"step": rec["step"], "loss": task_loss + loss - task, "task_loss": task_loss, "guidance_loss": guidance,
               "guided": rec["guided"], "lr": rec["lr"], "terms": dict(zip(terms, term_values, strict=True)),
               **({"balance": rec["balance"]} if "balance" in rec else {})}
        loop.metrics.write(json.dumps(rec) + "\n")
        loop.last = rec
        if loop.writer is not None:
            loop.writer.add_step(rec)
        if loop.progress is not None:
            loop.progress.update(loop.task_id, advance=1, loss=rec["task_loss"], dis=rec["guidance_loss"])

    def _resume_state(self, loop: Loop) -> dict[str, Any]:
        return {"optimizer": loop.opt.state_dict(), "scaler": loop.scaler.state_dict() if loop.scaler else None,
                "state": json.dumps(loop.state), "guide_calls": loop.pair.guide_calls,
                "scheduler": loop.sched.state_dict()}

    def _evaluate_and_save(self, loop: Loop) -> None:
        """Rank 0 evaluates every ``eval_every`` steps and checkpoints; other ranks carry on."""
        step, cfg = loop.step, self.cfg
        if not self.dist.is_main:
            return  # the next collective keeps the ranks in step
        if step % cfg.eval_every == 0 or step == loop.total:
            val = self.evaluate(self.model, loop.data["val"], batches=cfg.eval_batches)
            loop.metrics.write(json.dumps({"step": step, "split": "val", **val}) + "\n")
            loop.writer.add({f"val/{k}": v for k, v in val.items()}, step)
            if val["loss"] < loop.state["best_val_loss"]:
                loop.state.update(best_val_loss=val["loss"], best_step=step, best_val=val)
                self.checkpoints.save("best", self.model, step)
            loop.metrics.flush()
            os.fsync(loop.metrics.fileno())
            self.checkpoints.save("last", self.model, step, self._resume_state(loop))
            if loop.progress is not None:  # the bar shows the latest evaluation
                loop.progress.update(loop.task_id, val=val_text(val, self.task.primary_metric))
            elif self.verbose:
                print(f"step {step}/{loop.total} train {loop.last['task_loss']:.4f} val {val['loss']:.4f} "
                      + " ".join(f"{k} {v:.4g}" for k, v in val.items() if k != "loss"), flush=True)
        elif cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            loop.metrics.flush()
            self.checkpoints.save("last", self.model, step, self._resume_state(loop))

    def _finish(self, loop: Loop, wall: float) -> dict[str, Any]:
        """Test the best checkpoint, write test predictions and summary.json."""
        self.checkpoints.load_best(self.model)
        preds: list = []
        test = self.evaluate(self.model, loop.data["test"], preds)
        if preds:
            record = {"pred": [p for p, _ in preds], "label": [label for _, label in preds]}
            atomic_write(self.run_dir / "test_predictions.json", json.dumps(record) + "\n")
        state = loop.state
        summary = {
            "name": self.spec.name, "run_dir": str(self.run_dir), "mode": self.spec.guidance.mode,
            "guide_weights": self.spec.guide.weights, "seed": self.cfg.seed, "lr": self.cfg.lr, "steps": loop.step,
            "best_step": state["best_step"], "best_val_loss": state["best_val_loss"], "val": state["best_val"],
            "test": test, "primary_metric": self.task.primary_metric, "guide_calls": loop.pair.guide_calls,
            "wall_seconds_this_session": round(wall, 2), "device": str(self.device),
            "processes": self.dist.world, "compile_seconds": loop.pair.compile_seconds, **loop.pair.parameter_counts(),
        }
        write_json(self.run_dir / "summary.json", summary)
        return summary
