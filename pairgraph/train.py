"""``pairgraph train``: the training loop, run directories, checkpoints and exact resume.

A run lives in ``runs/<name>/<id>/``: ``spec.yaml`` (resolved), ``env.json``, ``metrics.jsonl``,
``tb/`` (TensorBoard), ``checkpoints/{last,best}`` and ``summary.json``. Data order is a
function of (seed, epoch) and the RNG state is checkpointed, so a resumed run continues exactly
where the last checkpoint stopped; metrics logged after that checkpoint are dropped on resume.
The protocol is the paper's: evaluate on the validation split every ``eval_every`` steps and
report test metrics of the checkpoint with the lowest validation loss.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from pairgraph import distributed
from pairgraph.errors import PairgraphError
from pairgraph.spec import PairSpec, as_spec

# ---------------------------------------------------------------- files, written atomically


def io_error(e: OSError, where: Path | str | None = None, verb: str = "access") -> PairgraphError:
    """A one-line error for a failed read or write: the file (default: the error's), the reason, the fix."""
    import errno

    where = where or e.filename or "?"
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        verb = "write"
        hint = ("free space on that disk or pass --runs-dir on another one; checkpoints already written are "
                "kept (continue with pairgraph train --resume RUN)")
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "make the folder writable or pass --runs-dir (or -o) pointing to a writable folder"
    else:
        hint = "check the path and the disk"
    return PairgraphError(f"cannot {verb} {where}: {reason}", hint)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename (never half a file).

    On failure the previous ``path`` is untouched and the temporary file is removed.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise io_error(e, path, "write") from None


def save_torch(path: Path, obj: Any) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def save_weights(path: Path, module: nn.Module) -> None:
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    atomic_write(path, save(state))


def environment(device: torch.device, seed: int) -> dict[str, Any]:
    import torchvision

    from pairgraph import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    info = {
        "pairgraph": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "processor": platform.machine(),
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "device": str(device), "seed": seed,
        "git_commit": commit,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PairgraphError(f"train.device is {name!r} but CUDA is not available", "use train.device=auto or cpu")
    return torch.device(name)


# ---------------------------------------------------------------- data order


class EpochBatches:
    """Batches of a seeded permutation per epoch, starting at any global step (for resume)."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world: int = 1):
        if n < batch_size:
            raise PairgraphError(f"the training split has {n} examples, fewer than train.batch_size={batch_size}",
                                 "lower train.batch_size or enlarge the dataset (task size)")
        self.n, self.bs, self.seed, self.start = n, batch_size, seed, start_step
        self.per_epoch = n // batch_size  # drop_last: CKA wants the same batch size every step
        self.rank, self.world = rank, world  # each rank takes its contiguous slice of the global batch

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            epoch, pos = divmod(step, self.per_epoch)
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            for p in range(pos, self.per_epoch):
                batch = perm[p * self.bs:(p + 1) * self.bs]
                local = self.bs // self.world
                yield batch[self.rank * local:(self.rank + 1) * local].tolist()
                step += 1


#: spec ``train.optimizer`` → its constructor from the train section and the parameters
OPTIMIZERS: dict[str, Any] = {
    "adamw": lambda c, params: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
    "adam": lambda c, params: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda c, params: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
}


def make_optimizer(train_spec: Any, params: Any) -> torch.optim.Optimizer:
    """The optimizer a spec's ``train`` section names, over ``params``."""
    return OPTIMIZERS[train_spec.optimizer](train_spec, params)


class Indexed(torch.utils.data.Dataset):
    """A dataset whose items also carry their example number (for the guide cache)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        return (*self.dataset[i], torch.tensor(i))


def _to(batch: Any, device: torch.device) -> Any:
    return [b.to(device, non_blocking=True) for b in batch]


# ---------------------------------------------------------------- the trainer


class Trainer:
    """Trains a compiled pair; ``run()`` returns the summary dict also written to summary.json."""

    def __init__(self, compiled: Any, runs_dir: str | Path = "runs", run_id: str | None = None,
                 resume: str | Path | None = None, progress: bool = True, stop_after: int | None = None):
        from pairgraph.tasks import get_task

        self.compiled = compiled
        self.spec: PairSpec = compiled.spec
        s = self.spec
        self.cfg = s.train
        self.dist = distributed.from_env()
        self.device = pick_device(self.cfg.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if self.dist.enabled and self.cfg.batch_size % self.dist.world:
            raise PairgraphError(f"train.batch_size {self.cfg.batch_size} does not divide over {self.dist.world} processes",
                                 "make the (global) batch size a multiple of the number of processes")
        self.task = get_task(s.task)
        self.progress = progress
        self.stop_after = stop_after
        distributed.init(self.dist, self.device)
        if resume is not None:
            self.run_dir = Path(resume)
        else:
            rid = run_id or time.strftime("%Y%m%d-%H%M%S") + f"-{s.guidance.mode}-s{self.cfg.seed}"
            rid = str(distributed.broadcast_object(rid))  # the same folder on every rank
            self.run_dir = Path(runs_dir) / s.name / rid
        self.ckpt_dir = self.run_dir / "checkpoints"
        self._last_saved: int | None = None  # step of the last checkpoint on disk
        self.model: nn.Module | None = None  # the target, unwrapped (pair.target is DDP-wrapped under torchrun)

    # -- setup ------------------------------------------------------------------------------
    def _guide_weights(self) -> str | None:
        w = self.spec.guide.weights
        if w == "untrained" or self.spec.guidance.mode == "baseline":
            return None
        if w == "train":
            return str(train_guide(self.spec, progress=self.progress))
        return w

    def _datasets(self) -> dict[str, Any]:
        data = self.task.datasets(self.cfg.seed)
        for split in ("train", "val", "test"):
            if split not in data:
                raise PairgraphError(f"task {self.spec.task['kind']!r} gave no {split!r} split", "check the task options")
        return data

    def _autocast(self) -> Any:
        p = self.cfg.precision
        if p == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if p == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, target: nn.Module, dataset: Any, predictions: list | None = None,
                 batches: int | None = None) -> dict[str, float]:
        """Loss and task metrics on ``dataset``; with ``predictions`` (a list), classifiers append
        ``(predicted class, label)`` per sample (for error consistency, paper §5.4).

        ``batches`` limits the evaluation to that many batches of a fixed, seeded random subset —
        never a prefix, which would be a biased sample of a split stored in class order.
        """
        target.eval()
        if batches is not None and batches * self.cfg.batch_size < len(dataset):
            g = torch.Generator().manual_seed(self.cfg.seed)
            keep = torch.randperm(len(dataset), generator=g)[: batches * self.cfg.batch_size].sort().values
            dataset = torch.utils.data.Subset(dataset, keep.tolist())
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=False,
                                             num_workers=self.cfg.num_workers)
        loss_sum, n = 0.0, 0
        sums: dict[str, list[float]] = {}
        for batch in loader:
            x, y = _to(batch, self.device)
            with self._autocast():
                out, _ = target(x)
            out = out.float()
            loss_sum += float(self.task.loss(out, y)) * len(x)
            if predictions is not None and out.dim() == 2:
                pred = (out[:, 0] > 0).long() if out.shape[1] == 1 else out.argmax(1)
                predictions.extend(zip(pred.tolist(), y.reshape(-1).long().tolist()))
            n += len(x)
            for k, (v, c) in self.task.metrics(out, y).items():
                acc = sums.setdefault(k, [0.0, 0])
                acc[0] += float(v)
                acc[1] += int(c)
        target.train()
        result = {"loss": loss_sum / max(n, 1)}
        result.update({k: v / max(c, 1) for k, (v, c) in sums.items()})
        return self.task.derived_metrics(result)

    # -- checkpoints ------------------------------------------------------------------------
    def _save(self, tag: str, pair: Any, opt: torch.optim.Optimizer, scaler: Any, step: int,
              state: dict[str, Any]) -> None:
        weights = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:  # never replace a good checkpoint with NaN/inf weights
            raise PairgraphError(
                f"target weights became non-finite ({bad}) at step {step}; {self._kept()}",
                "lower train.lr, set train.grad_clip, or use precision fp32",
            )
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_weights(self.ckpt_dir / f"{tag}.safetensors", self.model)
        if tag == "last":
            rng = {"cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            # the weights travel in the same file as the optimizer and RNG state: one rename
            # commits the whole checkpoint, so a kill between two writes cannot mix two steps
            save_torch(self.ckpt_dir / "last_state.pt", {
                "step": step, "optimizer": opt.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "rng": rng, "state": json.dumps(state), "guide_calls": pair.guide_calls, "target": weights,
            })
            self._last_saved = step

    def _kept(self) -> str:
        if self._last_saved is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint (step {self._last_saved}) is kept in {self.ckpt_dir}"

    def _load(self, pair: Any, opt: torch.optim.Optimizer, scaler: Any) -> tuple[int, dict[str, Any]]:
        import pickle

        from pairgraph.runtime import load_weights

        wpath, spath = self.ckpt_dir / "last.safetensors", self.ckpt_dir / "last_state.pt"
        if not (wpath.exists() and spath.exists()):
            raise PairgraphError(f"{self.run_dir} has no checkpoint to resume from",
                                 "start a new run (the run stopped before its first checkpoint)")
        try:
            st = torch.load(spath, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError) as e:
            # weights_only=True: a pickle with code in it is refused, never run
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise PairgraphError(f"cannot read the resume state {spath}: {msg}",
                                 "start a new run; this checkpoint is damaged or not pairgraph's") from None
        if not isinstance(st, dict) or not {"step", "optimizer", "rng", "state"} <= set(st):
            raise PairgraphError(f"{spath} is not a pairgraph resume state", "start a new run")
        if "target" in st:
            self.model.load_state_dict(st["target"])
        else:  # written before the weights were kept in last_state.pt
            load_weights(self.model, wpath, "target")
        opt.load_state_dict(st["optimizer"])
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        torch.set_rng_state(st["rng"]["cpu"])
        if "cuda" in st["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["rng"]["cuda"])
        pair.guide_calls = int(st.get("guide_calls", 0))
        self._last_saved = int(st["step"])
        return int(st["step"]), json.loads(st["state"])

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines logged after the checkpoint we resume from (no duplicated steps)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill (or garbage a crash left at the end)
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
                keep.append(line)
        atomic_write(path, ("\n".join(keep) + "\n").encode() if keep else b"")

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train (or resume); a failed read or write (disk full, permissions) becomes one line."""
        try:
            return self._run()
        except OSError as e:
            raise io_error(e, e.filename or self.run_dir) from None

    def _run(self) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        cfg, spec = self.cfg, self.spec
        resuming = (self.run_dir / "checkpoints" / "last_state.pt").exists()
        if not resuming and (self.run_dir / "summary.json").exists():
            raise PairgraphError(f"run {self.run_dir} already finished", "pick another --run-id or delete the folder")
        main = self.dist.is_main
        torch.manual_seed(cfg.seed + self.dist.rank)
        data = self._datasets()  # before the run folder exists: missing data leaves no empty run behind
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.enabled and self.spec.guide.weights == "train" and not guide_checkpoint_path(spec).exists():
            raise PairgraphError("guide.weights is 'train' but the trained guide is not cached, and several processes "
                                 "would train it at once", "train the guide in one process first "
                                 "(pairgraph train SPEC --set train.steps=1 caches it), then start torchrun")
        guide_weights = self._guide_weights()
        pair = self.compiled.build(self.device, guide_weights=guide_weights)
        self.model = pair.target
        opt = make_optimizer(cfg, [p for p in pair.target.parameters() if p.requires_grad])
        scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        per_epoch = len(data["train"]) // cfg.batch_size
        total = cfg.steps or (cfg.epochs or 1) * max(per_epoch, 1)
        state: dict[str, Any] = {"best_val_loss": math.inf, "best_step": None, "best_val": None}
        step = 0
        if resuming:
            step, state = self._load(pair, opt, scaler)
            if main:
                self._truncate_metrics(step)
        elif main:
            atomic_write(self.run_dir / "spec.yaml", yaml.safe_dump(spec.resolved(), sort_keys=False).encode())
            env = environment(self.device, cfg.seed)
            env["guide_weights"] = guide_weights
            atomic_write(self.run_dir / "env.json", (json.dumps(env, indent=2) + "\n").encode())
        if self.dist.enabled:  # every rank trains its slice of the same global batch; gradients are averaged
            pair.target = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            pair.global_batch = True
        cached = self._cache_guide(pair, data["train"])
        batches = EpochBatches(len(data["train"]), cfg.batch_size, cfg.seed, start_step=step,
                               rank=self.dist.rank, world=self.dist.world)
        loader = torch.utils.data.DataLoader(Indexed(data["train"]) if cached else data["train"],
                                             batch_sampler=batches, num_workers=cfg.num_workers)
        writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=step if resuming else None) if main else None
        metrics_f = open(self.run_dir / "metrics.jsonl" if main else os.devnull, "a")  # noqa: SIM115 - closed below
        t0 = time.time()
        prog, task_id = self._progress(total, step)
        it = iter(loader)
        try:
            while step < total:
                x, y, *index = _to(next(it), self.device)
                with self._autocast():
                    out = pair(x, y, step, index=index[0]) if index else pair(x, y, step)
                loss = out.loss
                if not torch.isfinite(loss):
                    raise PairgraphError(
                        f"loss became {loss.item()} at step {step + 1} (task {out.task_loss.item():.4g}, "
                        f"guidance {out.guidance_loss.item():.4g}); {self._kept()}",
                        "lower train.lr, set train.grad_clip, or use precision fp32",
                    )
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                else:
                    loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(pair.target.parameters(), cfg.grad_clip)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                step += 1
                task_loss = distributed.mean_over_ranks(out.task_loss.item())  # the global batch's mean
                rec = {"step": step, "loss": task_loss + loss.item() - out.task_loss.item(), "task_loss": task_loss,
                       "guidance_loss": out.guidance_loss.item(), "guided": out.guided,
                       "terms": {k: v.item() for k, v in out.terms.items()}}
                metrics_f.write(json.dumps(rec) + "\n")
                if writer is not None:
                    writer.add_scalar("train/loss", rec["loss"], step)
                    writer.add_scalar("train/task_loss", rec["task_loss"], step)
                    if out.guided:
                        writer.add_scalar("train/guidance_loss", rec["guidance_loss"], step)
                if prog is not None:
                    prog.update(task_id, advance=1, loss=rec["task_loss"], dis=rec["guidance_loss"])
                if not main:
                    pass  # rank 0 evaluates and writes; the next collective keeps the ranks in step
                elif step % cfg.eval_every == 0 or step == total:
                    val = self.evaluate(self.model, data["val"], batches=cfg.eval_batches)
                    metrics_f.write(json.dumps({"step": step, "split": "val", **val}) + "\n")
                    for k, v in val.items():
                        writer.add_scalar(f"val/{k}", v, step)
                    if val["loss"] < state["best_val_loss"]:
                        state.update(best_val_loss=val["loss"], best_step=step, best_val=val)
                        self._save("best", pair, opt, scaler, step, state)
                    metrics_f.flush()
                    os.fsync(metrics_f.fileno())
                    self._save("last", pair, opt, scaler, step, state)
                    if prog is None and self.progress:
                        print(f"step {step}/{total} train {rec['task_loss']:.4f} val {val['loss']:.4f} "
                              + " ".join(f"{k} {v:.4g}" for k, v in val.items() if k != "loss"), flush=True)
                elif cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    metrics_f.flush()
                    self._save("last", pair, opt, scaler, step, state)
                if self.stop_after is not None and step >= self.stop_after:
                    return {"stopped_at": step, "run_dir": str(self.run_dir)}
        finally:
            metrics_f.close()
            if writer is not None:
                writer.close()
            if prog is not None:
                prog.stop()
        if not main:
            distributed.shutdown()
            return {"rank": self.dist.rank, "run_dir": str(self.run_dir)}
        summary = self._finish(pair, data, state, step, time.time() - t0)
        distributed.shutdown()
        return summary

    def _cache_guide(self, pair: Any, train: Any) -> bool:
        """Build the guide cache when the spec asks for it (guidance.cache_guide); True if built."""
        g = self.spec.guidance
        if not g.cache_guide or g.mode != "guidance":
            return False
        if self.spec.task.get("augment"):
            raise PairgraphError("guidance.cache_guide needs fixed inputs, but task.augment is on",
                                 "set task.augment: false or guidance.cache_guide: false")
        if self.dist.enabled:
            raise PairgraphError("guidance.cache_guide is not supported under torchrun",
                                 "set guidance.cache_guide: false for data-parallel runs")

        def inputs(index: Tensor) -> Tensor:
            return torch.stack([train[int(i)][0] for i in index])

        t0 = time.time()
        cache = pair.cache_guide(inputs, len(train), max_bytes=g.cache_max_gb * 2**30, chunk=self.cfg.batch_size)
        if self.progress:
            print(f"guide cache: {len(train)} examples, {cache.nbytes / 2**20:.0f} MiB, "
                  f"built in {time.time() - t0:.1f} s", flush=True)
        return True

    def _progress(self, total: int, start: int) -> tuple[Any, Any]:
        import sys

        if not (self.progress and sys.stderr.isatty()):
            return None, None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        prog = Progress(TextColumn(f"[bold]{self.spec.name}[/bold] {self.spec.guidance.mode}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("task {task.fields[loss]:.4f}  dissim {task.fields[dis]:.3f}"),
                        TimeRemainingColumn())
        prog.start()
        return prog, prog.add_task("train", total=total, completed=start, loss=float("nan"), dis=0.0)

    def _finish(self, pair: Any, data: dict[str, Any], state: dict[str, Any], step: int, wall: float) -> dict[str, Any]:
        from pairgraph.runtime import load_weights

        best = self.ckpt_dir / "best.safetensors"
        if best.exists():
            load_weights(self.model, best, "target")
        preds: list = []
        test = self.evaluate(self.model, data["test"], preds)
        if preds:
            record = {"pred": [p for p, _ in preds], "label": [label for _, label in preds]}
            atomic_write(self.run_dir / "test_predictions.json", (json.dumps(record) + "\n").encode())
        summary = {
            "name": self.spec.name, "run_dir": str(self.run_dir), "mode": self.spec.guidance.mode,
            "guide_weights": self.spec.guide.weights, "seed": self.cfg.seed, "lr": self.cfg.lr, "steps": step,
            "best_step": state["best_step"], "best_val_loss": state["best_val_loss"], "val": state["best_val"],
            "test": test, "primary_metric": self.task.primary_metric, "guide_calls": pair.guide_calls,
            "wall_seconds_this_session": round(wall, 2), "device": str(self.device),
            "processes": self.dist.world,
        }
        atomic_write(self.run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        return summary


def train(compiled: Any, *, runs_dir: str | Path = "runs", run_id: str | None = None, resume: str | Path | None = None,
          progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Train a :class:`pairgraph.CompiledPair` (or a spec, compiled on the fly)."""
    from pairgraph.compiler import CompiledPair, compile

    if not isinstance(compiled, CompiledPair):
        compiled = compile(compiled, render=False)
    return Trainer(compiled, runs_dir, run_id, resume, progress, stop_after).run()


def resume_run(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Continue a killed run from its last checkpoint, with the spec it was started with."""
    from pairgraph.compiler import compile

    run = Path(run_dir)
    spec_file = run / "spec.yaml"
    if not spec_file.exists():
        raise PairgraphError(f"{run} is not a run folder (no spec.yaml)", "pass runs/<name>/<id>")
    compiled = compile(spec_file, out_dir=run / "build", render=False, notify=None)
    return Trainer(compiled, resume=run, progress=progress).run()


GUIDE_TRAIN_KEYS = ("optimizer", "lr", "weight_decay", "momentum", "grad_clip", "batch_size", "epochs", "steps",
                    "eval_every", "seed", "precision")


def guide_train_section(spec: PairSpec) -> dict[str, Any]:
    """The train section the guide is trained with: the spec's, updated by ``guide.train``."""
    return {**spec.resolved()["train"], **spec.guide.train}


def guide_checkpoint_path(spec: PairSpec) -> Path:
    """Where the trained guide of ``spec`` is cached: keyed by the task, the guide's model and args,
    and its own training settings — not by the target or the target's learning rate."""
    import hashlib

    from pairgraph.tasks import cache_dir

    data = spec.resolved()
    train = guide_train_section(spec)
    keyed = {"task": data["task"], "model": data["guide"]["model"], "args": data["guide"]["args"],
             "train": {k: train[k] for k in GUIDE_TRAIN_KEYS}}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "guides" / f"{spec.guide.model.replace(':', '_')}-{key}.safetensors"


def train_guide(spec: PairSpec, progress: bool = True) -> Path:
    """Train the guide on the task first (weights: train); cached (see :func:`guide_checkpoint_path`)."""
    from pairgraph.compiler import compile

    data = spec.resolved()
    out = guide_checkpoint_path(spec)
    if out.exists():
        return out
    key = out.stem.rsplit("-", 1)[-1]
    guide_spec = {
        **data, "name": f"{spec.name}-guide",
        "target": {"model": data["guide"]["model"], "args": data["guide"]["args"], "layers": data["guide"]["layers"]},
        "guide": {**data["guide"], "weights": "untrained", "train": {}},
        "guidance": {**data["guidance"], "mode": "baseline"},
        "mapping": {"kind": "uniform"},  # the baseline never maps; no calibration needed
        "train": guide_train_section(spec),
    }
    compiled = compile(as_spec(guide_spec), out_dir=out.parent / f"build-{key}", render=False, notify=None)
    summary = Trainer(compiled, runs_dir=out.parent / "runs", run_id=key, progress=progress).run()
    best = Path(summary["run_dir"]) / "checkpoints" / "best.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, best.read_bytes())
    atomic_write(out.with_suffix(".json"), (json.dumps(summary, indent=2) + "\n").encode())
    return out
