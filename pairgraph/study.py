"""``pairgraph study`` and ``pairgraph report``: the paper's protocol over cells × arms, and its report.

A *study file* (YAML, ``yaml.safe_load``) names cells — a spec and the arms to compare on it — and
the protocol of the paper's §4.3: for every (cell, arm) sweep the learning rates on one seed, keep
the one with the lowest best-validation loss, then train every seed at it. Mean ± standard error
(std with ddof=1 / √n) over the seeds of the test metric at each run's best-validation evaluation
is what the report shows.

::

    name: paper_cpu
    lrs: [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2]   # the sweep (a cell may give its own)
    sweep_seed: 0
    seeds: [0, 1, 2]
    overrides: [train.steps=200]                   # --set-style, every run
    cells:
      - name: fcn_deep
        spec: specs/fcn_deep_from_resnet18.yaml
        paper: {metric: ImageNet top-5 accuracy (%), source: Table 2,
                values: {baseline: [1.65, 0.51], trained: [7.50, 1.51], untrained: [13.10, 0.72]}}
        arms: [baseline, untrained, trained, {name: slow, overrides: [guidance.weight=0.1], lr: 1.0e-4}]

Results land in ``results/<study>/<cell>/<arm>/lr<lr>-s<seed>/`` (summary.json, metrics.jsonl.gz,
spec.yaml, env.json, test_predictions.json when the run wrote one, study.json, and guide/ with the
trained guide's own record); never checkpoints. Training happens in ``runs/study/...``. A run whose
summary.json is in the results is done; a run that diverged (non-finite loss or weights) is recorded
as ``diverged.json`` and counts as done (an lr that diverges loses the sweep); anything else that
failed is retried by the next invocation, resuming from its last checkpoint when it has one.

``pairgraph report`` reads only the results (and the study/spec files) and writes a markdown file
that is byte-identical on every invocation, plus figures.
"""

from __future__ import annotations

import difflib
import gzip
import json
import math
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pairgraph.errors import PairgraphError
from pairgraph.compiler.guide_weights import guide_checkpoint_path

#: predefined arm names and the overrides they stand for
PRESET_ARMS: dict[str, list[str]] = {
    "baseline": ["guidance.mode=baseline"],
    "untrained": ["guide.weights=untrained"],
    "trained": ["guide.weights=train"],
    "distill": ["guidance.mode=distill", "guide.weights=train"],
    "init150": ["guidance.until_step=150"],
    "noise": ["guidance.guide_input=noise"],
    "rsa": ["similarity.measure=rsa"],
    "debiased": ["similarity.measure=debiased_cka"],
    "learned": ["mapping.kind=learned"],
    "depth": ["mapping.kind=depth"],
    "uniform": ["mapping.kind=uniform"],
}
#: paper-number keys that are not arms: the guide network trained alone, and untrained
GUIDE_KEYS = ("guide", "untrained_guide")
#: files copied from a run folder into the results (never checkpoints/ or tb/)
RUN_FILES = ("summary.json", "metrics.jsonl", "spec.yaml", "env.json", "test_predictions.json")
_NAME = r"^[A-Za-z0-9_.-]+$"
#: spec fields that do not change what a run computes
_NOT_CONFIG = {"train.device", "train.num_workers", "guidance.cache_guide", "guidance.cache_max_gb"}
STUDY_HINT = "see the study file format in `pairgraph study --help` (pairgraph/study.py)"


# ---------------------------------------------------------------- the study file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _check_overrides(v: list[str]) -> list[str]:
    for item in v:
        key = item.partition("=")[0].strip()
        if "=" not in item or not key:
            raise ValueError(f"override {item!r} is not key.path=value")
    return v


class PaperNumbers(_Strict):
    """The paper's numbers for a cell: ``values`` maps an arm (or ``guide``/``untrained_guide``) to a
    number or ``[mean, s.e.]`` in the units of ``metric``."""

    metric: str = Field(description="What the numbers measure, e.g. 'ImageNet top-5 accuracy (%)'.")
    source: str | None = Field(default=None, description="Where in the paper, e.g. 'Table 2'.")
    higher_is_better: bool | None = Field(default=None, description="Default: guessed from the metric's name.")
    values: dict[str, float | tuple[float, float]] = Field(default_factory=dict)

    def get(self, key: str) -> tuple[float, float | None] | None:
        v = self.values.get(key)
        if v is None:
            return None
        return (float(v[0]), float(v[1])) if isinstance(v, tuple) else (float(v), None)

    def higher(self) -> bool:
        if self.higher_is_better is not None:
            return self.higher_is_better
        return _higher_is_better(self.metric)


class Arm(_Strict):
    """One configuration of a cell: a predefined name, or a name with its own overrides."""

    name: str = Field(pattern=_NAME)
    overrides: list[str] = Field(default_factory=list, description="--set-style overrides (after a preset's).")
    lr: float | None = Field(default=None, gt=0, description="Pin the learning rate (no sweep).")
    lr_from: str | None = Field(default=None, pattern=_NAME,
                                description="Take the lr chosen by this other (swept) arm of the cell (no sweep).")

    @property
    def swept(self) -> bool:
        return self.lr is None and self.lr_from is None

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: list[str]) -> list[str]:
        return _check_overrides(v)

    @model_validator(mode="after")
    def _known(self) -> Arm:
        if self.name not in PRESET_ARMS and not self.overrides:
            close = difflib.get_close_matches(self.name, list(PRESET_ARMS), n=1)
            raise ValueError(
                f"arm {self.name!r} is not predefined and gives no overrides"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + "; predefined: " + ", ".join(PRESET_ARMS)
            )
        return self

    @model_validator(mode="after")
    def _one_lr_source(self) -> Arm:
        if self.lr is not None and self.lr_from is not None:
            raise ValueError(f"arm {self.name!r} gives both lr and lr_from; keep one")
        return self

    def all_overrides(self) -> list[str]:
        return [*PRESET_ARMS.get(self.name, []), *self.overrides]


class Cell(_Strict):
    """A spec and the arms trained on it."""

    name: str = Field(pattern=_NAME)
    spec: str = Field(description="Spec YAML: relative to the current folder, else to the study file's folder.")
    label: str | None = Field(default=None, description="Human name for tables (default: the cell's name).")
    guide_label: str | None = Field(default=None, description="Guide's name in the paper-shaped tables.")
    target_label: str | None = Field(default=None, description="Target's name in the paper-shaped tables.")
    overrides: list[str] = Field(default_factory=list, description="--set-style overrides for this cell's runs.")
    lrs: list[float] | None = Field(default=None, description="This cell's lr sweep (default: the study's).")
    metric: str | None = Field(default=None, description="Test metric to report (default: the task's primary).")
    paper: PaperNumbers | None = None
    notes: str | None = Field(default=None, description="Markdown the report prints under the cell's table: what "
                              "was tried and found (e.g. why a cell disagrees with the paper).")
    arms: list[Arm] = Field(min_length=1)

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: list[str]) -> list[str]:
        return _check_overrides(v)

    @field_validator("arms", mode="before")
    @classmethod
    def _arm_names(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": a} if isinstance(a, str) else a for a in v]
        return v

    @field_validator("lrs")
    @classmethod
    def _lrs(cls, v: list[float] | None) -> list[float] | None:
        return None if v is None else _check_lrs(v)

    @model_validator(mode="after")
    def _consistent(self) -> Cell:
        names = [a.name for a in self.arms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"cell {self.name!r} lists arm(s) {', '.join(dup)} twice")
        by_name = {a.name: a for a in self.arms}
        for a in self.arms:
            if a.lr_from is None:
                continue
            src = by_name.get(a.lr_from)
            if src is None or src is a:
                raise ValueError(f"arm {a.name!r} of cell {self.name!r}: lr_from {a.lr_from!r} is not another arm "
                                 f"of the cell (arms: {', '.join(n for n in names if n != a.name)})")
            if not src.swept:
                raise ValueError(f"arm {a.name!r} of cell {self.name!r}: lr_from {a.lr_from!r} names an arm that "
                                 "does not sweep (it pins lr or takes lr_from itself); name a swept arm")
        if self.paper is not None:
            allowed = set(names) | set(GUIDE_KEYS) | set(PRESET_ARMS)
            bad = sorted(set(self.paper.values) - allowed)
            if bad:
                raise ValueError(f"paper.values of cell {self.name!r} names {', '.join(bad)}: not an arm "
                                 f"(use arm names, a predefined arm, guide or untrained_guide)")
        return self


def _check_lrs(v: list[float]) -> list[float]:
    if not v:
        raise ValueError("the lr list is empty")
    if any(not (x > 0) for x in v):
        raise ValueError("learning rates must be > 0")
    if len({lr_tag(x) for x in v}) != len(v):
        raise ValueError("the lr list repeats a value")
    return sorted(float(x) for x in v)


class Study(_Strict):
    """A study: cells × arms under the lr-sweep-then-seeds protocol."""

    name: str = Field(pattern=_NAME)
    description: str | None = None
    results_dir: str | None = Field(default=None, description="Default results/<name>.")
    runs_dir: str = Field(default="runs/study", description="Where training runs (with checkpoints) are written.")
    lrs: list[float] = Field(description="The learning-rate sweep (the paper sweeps 5 values).")
    sweep_seed: int = 0
    seeds: list[int] = Field(description="Seeds trained at the chosen lr (at least min_seeds).")
    min_seeds: int = Field(default=3, ge=2, description="Fewest seeds allowed (standard errors need several).")
    overrides: list[str] = Field(default_factory=list, description="--set-style overrides for every run.")
    cells: list[Cell] = Field(min_length=1)

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: list[str]) -> list[str]:
        return _check_overrides(v)

    @field_validator("lrs")
    @classmethod
    def _lrs(cls, v: list[float]) -> list[float]:
        return _check_lrs(v)

    @model_validator(mode="after")
    def _consistent(self) -> Study:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds repeats a value")
        if len(self.seeds) < self.min_seeds:
            raise ValueError(f"seeds has {len(self.seeds)} value(s); at least {self.min_seeds} are needed for a "
                             f"standard error (the paper uses 5)")
        self.seeds = sorted(self.seeds)
        names = [c.name for c in self.cells]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"cell name(s) {', '.join(dup)} appear twice")
        return self

    # -- paths (set by load_study)
    _file: Path = Path("study.yaml")

    @property
    def file(self) -> Path:
        return self._file

    def results_path(self) -> Path:
        return Path(self.results_dir) if self.results_dir else Path("results") / self.name

    def runs_path(self) -> Path:
        return Path(self.runs_dir) / self.name

    def cell(self, name: str) -> Cell:
        for c in self.cells:
            if c.name == name:
                return c
        raise PairgraphError(f"study {self.name!r} has no cell {name!r}",
                             "use one of " + ", ".join(c.name for c in self.cells))

    def spec_path(self, cell: Cell) -> Path:
        p = Path(cell.spec).expanduser()
        if p.is_absolute() or p.exists():
            candidates = [p]
        else:
            candidates = [p, self.file.parent / p]
        for c in candidates:
            if c.is_file():
                return c
        raise PairgraphError(f"cell {cell.name!r}: spec file {cell.spec!r} not found",
                             f"give a path relative to the current folder or to {self.file.parent}")

    def sweep_lrs(self, cell: Cell, arm: Arm) -> list[float]:
        return list(cell.lrs or self.lrs) if arm.swept else []

    def overrides_for(self, cell: Cell, arm: Arm, lr: float | None = None, seed: int | None = None) -> list[str]:
        out = [*self.overrides, *cell.overrides, *arm.all_overrides()]
        if lr is not None:
            out.append(f"train.lr={_yaml_float(lr)}")
        if seed is not None:
            out.append(f"train.seed={seed}")
        return out


def _yaml_float(x: float) -> str:
    """A float that yaml.safe_load reads back as the same float (PyYAML wants '1.0e-05', not '1e-05')."""
    r = repr(float(x))
    if "e" in r and "." not in r.split("e")[0]:
        r = r.replace("e", ".0e")
    return r


def lr_tag(lr: float) -> str:
    return f"{float(lr):g}"


def run_folder(lr: float, seed: int) -> str:
    return f"lr{lr_tag(lr)}-s{seed}"


def _loc_text(loc: tuple[Any, ...], data: Any) -> str:
    """cells.0.arms.1 → cells[fcn_deep].arms[1] where names are known."""
    parts, node = [], data
    for key in loc:
        if isinstance(key, int) and isinstance(node, list) and key < len(node):
            item = node[key]
            label = item.get("name") if isinstance(item, dict) else item if isinstance(item, str) else None
            parts[-1 if parts else 0:] = [f"{parts[-1] if parts else ''}[{label if label else key}]"]
            node = item
        else:
            parts.append(str(key))
            node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts)


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; any mistake becomes a one-line :class:`PairgraphError`."""
    from pairgraph.config import node_line as _node_line

    p = Path(path)
    if not p.is_file():
        raise PairgraphError(f"study file {str(p)!r} not found" if not p.exists() else f"{p} is not a file",
                             "pass a study YAML such as studies/paper_cpu.yaml")
    try:
        text = p.read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise PairgraphError(f"{p}: not UTF-8 text (byte {e.start})", "save the study as UTF-8 YAML") from None
    except OSError as e:
        raise PairgraphError(f"cannot read {p}: {e.strerror or e}", "check the file's permissions") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PairgraphError(f"{p}{line}: YAML syntax error: {problem}", "fix the YAML (indentation, ':' after keys)") from None
    if not isinstance(data, dict):
        raise PairgraphError(f"{p}: a study file is a mapping (name:, lrs:, seeds:, cells:)", STUDY_HINT)
    try:
        study = Study.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and (x.startswith("function-") or x in
                                                                             ("float", "tuple[float, float]"))))
        line = _node_line(root, loc)
        where = f"{p}:{line}" if line else str(p)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            model: type[BaseModel] | None = Study if len(loc) == 1 else Cell if len(loc) == 3 else (
                Arm if len(loc) == 5 and loc[2] == "arms" else PaperNumbers if "paper" in loc else None)
            names = list(model.model_fields) if model else []
            close = difflib.get_close_matches(str(loc[-1]), names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else ("valid fields: " + ", ".join(names) if names else "remove it")
            raise PairgraphError(f"{where}: {_loc_text(loc, data)}: unknown field", hint) from None
        if err["type"] == "missing":
            raise PairgraphError(f"{where}: {_loc_text(loc, data)}: required field missing",
                                 f"add '{loc[-1]}:'") from None
        field_txt = _loc_text(loc, data)
        raise PairgraphError(f"{where}: {field_txt + ': ' if field_txt else ''}{msg}", STUDY_HINT) from None
    study._file = p
    return study


# ---------------------------------------------------------------- the plan: what is done, what is left


@dataclass(frozen=True)
class Job:
    """One training run of the protocol, as plain data (it travels to worker processes)."""

    study: str
    cell: str
    arm: str
    lr: float
    seed: int
    phase: str  # "sweep" | "seeds"
    spec: str
    overrides: tuple[str, ...]
    runs_dir: str
    out: str
    guide_key: str | None = None

    @property
    def key(self) -> tuple[str, str, str, int]:
        return self.cell, self.arm, lr_tag(self.lr), self.seed

    def title(self) -> str:
        return f"{self.cell}/{self.arm} lr={lr_tag(self.lr)} seed={self.seed} ({self.phase})"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict) and d:
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def _spec_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Fields (dotted) where two resolved specs differ in what they compute."""
    fa, fb = _flat(yaml.safe_load(yaml.safe_dump(a))), _flat(yaml.safe_load(yaml.safe_dump(b)))
    keys = sorted((set(fa) | set(fb)) - _NOT_CONFIG)
    return [f"{k}: {fa.get(k)!r} → {fb.get(k)!r}" for k in keys if fa.get(k) != fb.get(k)]


def _best_val(summary: dict[str, Any] | None) -> float:
    v = (summary or {}).get("best_val_loss")
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.inf
    return v if math.isfinite(v) else math.inf


@dataclass
class ArmPlan:
    """The protocol's state for one (cell, arm), read from the results folder."""

    study: Study
    cell: Cell
    arm: Arm
    spec_file: Path
    base: Any  # PairSpec with the study, cell and arm overrides (lr and seed as the spec says)

    @property
    def out_dir(self) -> Path:
        return self.study.results_path() / self.cell.name / self.arm.name

    def state(self, lr: float, seed: int) -> str:
        """done | diverged | todo."""
        d = self.out_dir / run_folder(lr, seed)
        if (d / "summary.json").is_file():
            return "done"
        if (d / "diverged.json").is_file():
            return "diverged"
        return "todo"

    def sweep(self) -> list[float]:
        return self.study.sweep_lrs(self.cell, self.arm)

    def source(self) -> ArmPlan | None:
        """The plan of the arm whose chosen lr this arm takes (``lr_from``)."""
        if self.arm.lr_from is None:
            return None
        src = next(a for a in self.cell.arms if a.name == self.arm.lr_from)
        return ArmPlan(self.study, self.cell, src, self.spec_file, None)

    def chosen(self) -> float | None:
        """The pinned lr, the lr_from arm's choice, else the swept lr with the lowest best-validation loss
        (once the sweep is complete)."""
        if self.arm.lr is not None:
            return float(self.arm.lr)
        src = self.source()
        if src is not None:
            return src.chosen()
        lrs = self.sweep()
        states = {lr: self.state(lr, self.study.sweep_seed) for lr in lrs}
        if any(s == "todo" for s in states.values()):
            return None
        scored = [(_best_val(_read_json(self.out_dir / run_folder(lr, self.study.sweep_seed) / "summary.json")), lr)
                  for lr, s in states.items() if s == "done"]
        scored = [x for x in scored if math.isfinite(x[0])]
        return min(scored)[1] if scored else None  # ties: the smaller lr

    def sweep_runs(self) -> list[tuple[float, int]]:
        return [(lr, self.study.sweep_seed) for lr in self.sweep()]

    def seed_runs(self, lr: float) -> list[tuple[float, int]]:
        swept = self.arm.swept
        return [(lr, s) for s in self.study.seeds if not (swept and s == self.study.sweep_seed)]

    def n_runs(self) -> int:
        return len(self.sweep_runs()) + len(self.seed_runs(0.0))

    def ready(self) -> list[tuple[str, float, int]]:
        """Runs that can start now: (phase, lr, seed)."""
        todo = [("sweep", lr, s) for lr, s in self.sweep_runs() if self.state(lr, s) == "todo"]
        if todo:
            return todo
        lr = self.chosen()
        if lr is None:
            return []
        return [("seeds", lr, s) for lr_, s in self.seed_runs(lr) if self.state(lr_, s) == "todo"]

    def counts(self) -> dict[str, int]:
        done = div = 0
        for lr, s in self.sweep_runs():
            st = self.state(lr, s)
            done += st == "done"
            div += st == "diverged"
        lr = self.chosen()
        if lr is not None:
            for lr_, s in self.seed_runs(lr):
                st = self.state(lr_, s)
                done += st == "done"
                div += st == "diverged"
        return {"total": self.n_runs(), "done": done, "diverged": div, "left": self.n_runs() - done - div}

    def spec_at(self, lr: float, seed: int) -> Any:
        from pairgraph.config import as_spec

        return as_spec(self.base, [f"train.lr={_yaml_float(lr)}", f"train.seed={seed}"])

    def job(self, phase: str, lr: float, seed: int) -> Job:
        spec = self.spec_at(lr, seed)
        guide_key = None
        if spec.guide.weights == "train" and spec.guidance.mode != "baseline":
            guide_key = str(guide_checkpoint_path(spec))
        return Job(self.study.name, self.cell.name, self.arm.name, float(lr), int(seed), phase, str(self.spec_file),
                   tuple(self.study.overrides_for(self.cell, self.arm, lr, seed)),
                   str(self.study.runs_path() / self.cell.name / self.arm.name),
                   str(self.out_dir / run_folder(lr, seed)), guide_key)

    def check_stale(self) -> None:
        """Refuse results that were run with a different spec than the study now gives."""
        if not self.out_dir.is_dir():
            return
        want = self.base.resolved()
        for d in sorted(self.out_dir.iterdir()):
            stored = _read_yaml(d / "spec.yaml") if d.is_dir() and _FOLDER.match(d.name) else None
            if stored is None:
                continue
            stored = {**stored, "train": {**(stored.get("train") or {}), "lr": want["train"]["lr"],
                                          "seed": want["train"]["seed"]}}
            diff = _spec_diff(stored, want)
            if diff:
                raise PairgraphError(
                    f"{d} was run with a different spec than study {self.study.name!r} now gives ("
                    + "; ".join(diff[:3]) + (f"; {len(diff) - 3} more" if len(diff) > 3 else "") + ")",
                    "restore the study file, or move that results folder away to rerun it")


def _select(study: Study, only: Iterable[str] | None) -> list[tuple[Cell, Arm]]:
    pairs = [(c, a) for c in study.cells for a in c.arms]
    if not only:
        return pairs
    keep: set[tuple[str, str]] = set()
    for item in only:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            cname, _, aname = part.partition("/")
            cell = study.cell(cname)
            if aname and aname not in {a.name for a in cell.arms}:
                raise PairgraphError(f"cell {cname!r} has no arm {aname!r}",
                                     "use one of " + ", ".join(a.name for a in cell.arms))
            keep |= {(cname, a.name) for a in cell.arms if not aname or a.name == aname}
    return [(c, a) for c, a in pairs if (c.name, a.name) in keep]


def plan_study(study: Study | str | Path, only: Iterable[str] | None = None) -> list[ArmPlan]:
    """Validate every selected (cell, arm) spec (no data, no training) and read what is done."""
    from pairgraph.config import load_spec

    if not isinstance(study, Study):
        study = load_study(study)
    plans = []
    for cell, arm in _select(study, only):
        spec_file = study.spec_path(cell)
        try:
            base = load_spec(spec_file, study.overrides_for(cell, arm))
        except PairgraphError as e:
            raise PairgraphError(f"cell {cell.name!r}, arm {arm.name!r}: {e.message}", e.hint) from None
        ap = ArmPlan(study, cell, arm, spec_file, base)
        ap.check_stale()
        plans.append(ap)
    return plans


def _guide_cached(spec: Any) -> bool:
    return guide_checkpoint_path(spec).exists()


def format_plan(plans: list[ArmPlan]) -> str:
    """The dry-run table: per (cell, arm) the sweep, the chosen lr, the seeds, and what is left."""
    if not plans:
        return "nothing selected"
    study = plans[0].study
    lines = [(f"study {study.name} ({study.file}): {len({p.cell.name for p in plans})} cells, {len(plans)} arms; "
             f"lr sweep on seed {study.sweep_seed}, then seeds {study.seeds} at the chosen lr"),
             f"results: {study.results_path()}   training runs: {study.runs_path()}", ""]
    head = f"{'cell/arm':<34} {'steps':>6} {'sweep lrs':<44} {'chosen':>8} {'seeds':>6} {'left':>5}"
    lines += [head, "-" * len(head)]
    tot = {"total": 0, "done": 0, "diverged": 0, "left": 0}
    steps_left = 0
    guides_left: set[Path] = set()
    unknown_steps = False
    for p in plans:
        c = p.counts()
        for k in tot:
            tot[k] += c[k]
        steps = p.base.train.steps
        if steps is None:
            unknown_steps = True
        else:
            steps_left += steps * c["left"]
        chosen = p.chosen()
        sweep = p.sweep()
        if sweep:
            marks = []
            for lr in sweep:
                st = p.state(lr, study.sweep_seed)
                marks.append(lr_tag(lr) + {"done": "✓", "diverged": "✗", "todo": ""}[st])
            sweep_txt = " ".join(marks)
        else:
            sweep_txt = f"(lr of {p.arm.lr_from})" if p.arm.lr_from else "(pinned)"
        seeds_done = 0
        if chosen is not None:
            seeds_done = sum(p.state(chosen, s) != "todo" for s in study.seeds)
        if p.base.guide.weights == "train" and p.base.guidance.mode != "baseline":
            # the seed runs' lr is unknown before the sweep ends; the guide's key never depends on the
            # target's lr when guide.train pins its own, so the sweep lrs stand in for it
            # (an lr_from arm has no sweep of its own: its source's lrs stand in until that sweep ends)
            src = p.source()
            stand_in = p.sweep() or (src.sweep() if src is not None else [])
            runs = p.sweep_runs() + [(lr, s) for lr in ([chosen] if chosen is not None else stand_in)
                                     for _, s in p.seed_runs(lr)]
            guides_left.update(guide_checkpoint_path(sp) for lr, s in runs
                               if p.state(lr, s) == "todo" and not _guide_cached(sp := p.spec_at(lr, s)))
        steps_txt = str(steps) if steps is not None else f"{p.base.train.epochs or 1}ep"
        lines.append(f"{p.cell.name + '/' + p.arm.name:<34} {steps_txt:>6} {sweep_txt:<44} "
                     f"{lr_tag(chosen) if chosen is not None else '—':>8} "
                     f"{f'{seeds_done}/{len(study.seeds)}':>6} {c['left']:>5}")
    lines.append("")
    lines.append(f"runs: {tot['total']} in all, {tot['done']} done, {tot['diverged']} diverged, {tot['left']} left"
                 f" = {steps_left:,} optimizer steps left" + (" (+ epoch-based runs)" if unknown_steps else ""))
    if guides_left:
        lines.append(f"plus up to {len(guides_left)} guide trainings (guide.weights=train: one per distinct guide "
                     f"training setting, cached in $PAIRGRAPH_CACHE/guides)")
    return "\n".join(lines)


# ---------------------------------------------------------------- one run (in this process or a worker)


def _diverged(e: PairgraphError) -> bool:
    m = e.message
    return "became non-finite" in m or bool(re.search(r"loss became (nan|inf|-inf)", m))


def _guide_run_dir(guide_weights: str, spec_name: str) -> Path | None:
    """The run folder in which pairgraph.training.train_guide trained a cached guide, if it is there."""
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
    if out.exists():  # an incomplete earlier copy (done runs are never re-executed)
        shutil.rmtree(out)
    os.replace(tmp, out)


def _store(job: Job, run_dir: Path, spec: Any, record: dict[str, Any], diverged: str | None = None) -> None:
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
        env = _read_json(run_dir / "env.json") or {}
        gw = env.get("guide_weights")
        if gw and spec.guide.weights == "train":
            gdir = _guide_run_dir(str(gw), spec.name)
            if gdir is not None:
                _copy_files(gdir, tmp / "guide")
    (tmp / "study.json").write_text(json.dumps(record, indent=2) + "\n")
    _commit(tmp, out)


def _train_run(job: Job) -> tuple[Path, Any, bool]:
    """Train (or resume, or just pick up) the run of ``job``; returns (run folder, spec, resumed)."""
    from pairgraph.api import compile as compile_pair
    from pairgraph.config import load_spec

    spec = load_spec(job.spec, list(job.overrides))
    runs_dir = Path(job.runs_dir)
    run_id = run_folder(job.lr, job.seed)
    run_dir = runs_dir / spec.name / run_id
    if run_dir.exists():
        stored = _read_yaml(run_dir / "spec.yaml")
        if stored is not None and _spec_diff(stored, spec.resolved()):
            shutil.rmtree(run_dir)  # an old run of another configuration
        elif (run_dir / "summary.json").is_file():
            return run_dir, spec, False  # finished, but was not copied into the results
        elif not (run_dir / "checkpoints" / "last_state.pt").is_file():
            shutil.rmtree(run_dir)  # crashed before its first checkpoint: start again
    resume = run_dir if (run_dir / "checkpoints" / "last_state.pt").is_file() else None
    compiled = compile_pair(spec, run_dir / "build", render=False, notify=None)
    compiled.train(runs_dir=runs_dir, run_id=run_id, resume=resume, progress=False)
    return run_dir, spec, resume is not None


def _execute(job: Job) -> dict[str, Any]:
    """Run one job and store it; never raises for a failed run (the result says what happened)."""
    t0 = time.time()
    record = {"study": job.study, "cell": job.cell, "arm": job.arm, "phase": job.phase, "lr": job.lr,
              "seed": job.seed}
    try:
        run_dir, spec, resumed = _train_run(job)
    except PairgraphError as e:
        if _diverged(e):
            from pairgraph.config import load_spec

            spec = load_spec(job.spec, list(job.overrides))
            run_dir = Path(job.runs_dir) / spec.name / run_folder(job.lr, job.seed)
            _store(job, run_dir, spec, {**record, "wall_seconds": round(time.time() - t0, 2)}, diverged=str(e))
            return {"status": "diverged", "error": str(e)}
        return {"status": "failed", "error": str(e)}
    except Exception as e:  # noqa: BLE001 - one failed run must not stop the study
        import traceback

        first = (str(e).strip().splitlines() or [""])[0][:300]
        return {"status": "failed", "error": f"{type(e).__name__}: {first}",
                "traceback": "".join(traceback.format_exception(e))[-4000:]}
    wall = time.time() - t0
    _store(job, run_dir, spec, {**record, "wall_seconds": round(wall, 2), "resumed": resumed})
    return {"status": "done", "summary": _read_json(Path(job.out) / "summary.json") or {}, "wall": wall}


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------- the scheduler


@dataclass
class StudyOutcome:
    """What one ``pairgraph study`` invocation did."""

    trained: int = 0
    diverged: int = 0
    failed: list[str] = field(default_factory=list)
    chosen: dict[str, float | None] = field(default_factory=dict)  # "cell/arm" → lr


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
    by_arm = {(p.cell.name, p.arm.name): p for p in plans}
    outcome = StudyOutcome()
    ready: deque[Job] = deque()
    seen: set[tuple[str, str, str, int]] = set()

    rank = {(p.cell.name, p.arm.name): i for i, p in enumerate(plans)}

    def enqueue(p: ArmPlan) -> None:
        for phase, lr, seed in p.ready():
            job = p.job(phase, lr, seed)
            if job.key not in seen:
                seen.add(job.key)
                ready.append(job)
        # the study file's order: an earlier cell's seeds go before a later cell's sweep, so a study
        # run in parts finishes whole cells (stable: an arm keeps its own sweep-then-seeds order)
        jobs_ = sorted(ready, key=lambda j: rank[(j.cell, j.arm)])
        ready.clear()
        ready.extend(jobs_)

    for p in plans:
        enqueue(p)
    left = sum(p.counts()["left"] for p in plans)
    echo(f"study {plans[0].study.name if plans else '?'}: {left} runs left" + (f", {jobs} at a time" if jobs > 1 else ""))
    count = 0

    def finished(job: Job, res: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        p = by_arm[(job.cell, job.arm)]
        status = res["status"]
        if status == "done":
            outcome.trained += 1
            s = res.get("summary") or {}
            metric = s.get("primary_metric")
            test = (s.get("test") or {}).get(metric)
            echo(f"[{count}/{left}] {job.title()}: best val {_best_val(s):.4f} at step {s.get('best_step')}, "
                 f"test {metric} {test if test is None else f'{test:.4g}'} ({res.get('wall', 0):.0f} s)")
        elif status == "diverged":
            outcome.diverged += 1
            echo(f"[{count}/{left}] {job.title()}: diverged ({res['error'].split(' — ')[0]})")
        else:
            outcome.failed.append(f"{job.title()}: {res['error']}")
            echo(f"[{count}/{left}] {job.title()}: FAILED: {res['error']}")
            if res.get("traceback"):
                echo(res["traceback"].rstrip())
        if job.phase == "sweep" and p.arm.swept and not any(p.state(lr, s) == "todo" for lr, s in p.sweep_runs()):
            lr = p.chosen()
            outcome.chosen[f"{job.cell}/{job.arm}"] = lr
            echo(f"{job.cell}/{job.arm}: sweep complete, chose lr={lr_tag(lr)}" if lr is not None
                 else f"{job.cell}/{job.arm}: every lr of the sweep diverged; no seeds to run")
        enqueue(p)
        for q in plans:  # arms that take this arm's chosen lr can start once its sweep is complete
            if q.cell.name == p.cell.name and q.arm.lr_from == p.arm.name:
                enqueue(q)

    if jobs == 1:
        while ready:
            job = ready.popleft()
            echo(f"start {job.title()}")
            finished(job, _execute(job))
    else:
        _run_parallel(ready, jobs, finished, echo)
    return outcome


def _run_parallel(ready: deque[Job], jobs: int, finished: Callable[[Job, dict[str, Any]], None],
                  echo: Callable[[str], None]) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    threads = max(1, _cores() // jobs)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))
    running: dict[Future[dict[str, Any]], Job] = {}
    busy: set[str] = set()
    try:
        while ready or running:
            for job in list(ready):
                if len(running) >= jobs:
                    break
                training = job.guide_key is not None and not Path(job.guide_key).exists()
                if training and job.guide_key in busy:
                    continue  # another process is training this guide right now; once it is cached, share it
                ready.remove(job)
                if training:
                    busy.add(job.guide_key)
                echo(f"start {job.title()} ({threads} threads)")
                running[pool.submit(_execute, job)] = job
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: running[f].key):
                job = running.pop(fut)
                if job.guide_key is not None:
                    busy.discard(job.guide_key)
                try:
                    res = fut.result()
                except Exception as e:  # noqa: BLE001 - a worker that died (killed, out of memory)
                    res = {"status": "failed", "error": f"worker process failed: {type(e).__name__}: {e}"}
                finished(job, res)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# ---------------------------------------------------------------- the report: reading results


@dataclass
class StoredRun:
    path: Path
    lr: float
    seed: int
    summary: dict[str, Any] | None
    spec: dict[str, Any]
    env: dict[str, Any]
    record: dict[str, Any]
    diverged: dict[str, Any] | None

    @property
    def done(self) -> bool:
        return self.summary is not None


_FOLDER = re.compile(r"^lr(.+)-s(-?\d+)$")


def _load_stored(d: Path) -> StoredRun | None:
    m = _FOLDER.match(d.name)
    if not d.is_dir() or m is None:
        return None
    summary = _read_json(d / "summary.json")
    diverged = _read_json(d / "diverged.json")
    if summary is None and diverged is None:
        return None
    record = _read_json(d / "study.json") or {}
    try:
        lr = float(record.get("lr", m.group(1)))
        seed = int(record.get("seed", m.group(2)))
    except (TypeError, ValueError):
        return None
    return StoredRun(d, lr, seed, summary, _read_yaml(d / "spec.yaml") or {}, _read_json(d / "env.json") or {},
                     record, diverged)


@dataclass
class ArmResult:
    cell: Cell
    arm: Arm
    sweep: dict[str, StoredRun | None]  # lr tag → the sweep run (None: not run)
    chosen: float | None
    seeds: list[StoredRun]  # completed seed runs at the chosen lr
    diverged_seeds: list[int]
    all_runs: list[StoredRun]

    @property
    def status(self) -> str:
        if not self.all_runs:
            return "not run"
        if self.chosen is None:
            if self.sweep and all(r is not None for r in self.sweep.values()):
                return "every lr diverged"
            return f"sweep {sum(r is not None for r in self.sweep.values())}/{len(self.sweep)}"
        finished = len(self.seeds) + len(self.diverged_seeds)
        return "done" if finished >= self.n_seeds else f"seeds {finished}/{self.n_seeds}"

    n_seeds: int = 0


def collect(study: Study) -> dict[tuple[str, str], ArmResult]:
    out: dict[tuple[str, str], ArmResult] = {}
    root = study.results_path()
    for cell in study.cells:
        for arm in sorted(cell.arms, key=lambda a: a.lr_from is not None):  # lr_from arms after their source
            d = root / cell.name / arm.name
            runs = [r for r in (_load_stored(x) for x in sorted(d.iterdir())) if r is not None] if d.is_dir() else []
            by = {(lr_tag(r.lr), r.seed): r for r in runs}
            sweep = {lr_tag(lr): by.get((lr_tag(lr), study.sweep_seed)) for lr in study.sweep_lrs(cell, arm)}
            chosen: float | None
            if arm.lr is not None:
                chosen = float(arm.lr)
            elif arm.lr_from is not None:
                chosen = out[(cell.name, arm.lr_from)].chosen
            elif sweep and all(r is not None for r in sweep.values()):
                scored = [(_best_val(r.summary), r.lr) for r in sweep.values() if r is not None and r.done]
                scored = [x for x in scored if math.isfinite(x[0])]
                chosen = min(scored)[1] if scored else None
            else:
                chosen = None
            seeds: list[StoredRun] = []
            div: list[int] = []
            if chosen is not None:
                for s in study.seeds:
                    r = by.get((lr_tag(chosen), s))
                    if r is not None and r.done:
                        seeds.append(r)
                    elif r is not None:
                        div.append(s)
            out[(cell.name, arm.name)] = ArmResult(cell, arm, sweep, chosen, seeds, div, runs, len(study.seeds))
    return out


# ---------------------------------------------------------------- the report: numbers and formatting


def _higher_is_better(metric: str) -> bool:
    m = metric.lower()
    return not any(w in m for w in ("perplexity", "loss", "error", "ppl"))


def _is_fraction(metric: str) -> bool:
    return metric in ("top1", "top5") or metric.endswith("accuracy")


def _scale(metric: str, v: float) -> float:
    return 100.0 * v if _is_fraction(metric) else v


def _unit(metric: str) -> str:
    return f"{metric} (%)" if _is_fraction(metric) else metric


def _num(x: float, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    s = f"{x:.{digits}f}"
    if float(s) == 0.0:
        s = f"{0.0:.{digits}f}"  # no "-0.00"
    return s


def _signed(x: float, digits: int = 2) -> str:
    s = _num(x, digits)
    return s if s.startswith("-") or s in ("—", "∞", "−∞") else "+" + s


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var) / math.sqrt(n)


def _pm(mean: float, se: float | None) -> str:
    return _num(mean) + (f" ± {_num(se)}" if se is not None else "")


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def _table(head: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(head) - 1)
    sep = ["---:" if a == "r" else ":---:" if a == "c" else "---" for a in align]
    return ["| " + " | ".join(_md_escape(h) for h in head) + " |", "| " + " | ".join(sep) + " |",
            *["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in rows]]


@dataclass
class CellView:
    """A cell's resolved facts for the report."""

    cell: Cell
    arms: dict[str, ArmResult]
    base_spec: dict[str, Any]
    metric: str
    higher: bool

    @property
    def label(self) -> str:
        return self.cell.label or self.cell.name

    @property
    def task_kind(self) -> str:
        return str((self.base_spec.get("task") or {}).get("kind", "?"))

    def guide_label(self) -> str:
        return self.cell.guide_label or str((self.base_spec.get("guide") or {}).get("model", "guide"))

    def target_label(self) -> str:
        return self.cell.target_label or str((self.base_spec.get("target") or {}).get("model", "target"))

    def values(self, arm: str) -> list[float]:
        ar = self.arms.get(arm)
        if ar is None:
            return []
        out = []
        for r in ar.seeds:
            v = ((r.summary or {}).get("test") or {}).get(self.metric)
            if isinstance(v, int | float):
                out.append(_scale(self.metric, float(v)))
        return out

    def guide_values(self) -> list[float]:
        """The trained guide's own test metric (from guide/ of the trained arm's seed runs)."""
        ar = self.arms.get("trained")
        if ar is None:
            return []
        out = []
        for r in ar.seeds:
            s = _read_json(r.path / "guide" / "summary.json")
            v = ((s or {}).get("test") or {}).get(self.metric)
            if isinstance(v, int | float):
                out.append(_scale(self.metric, float(v)))
        return out

    def stat(self, key: str) -> tuple[float, float | None, int] | None:
        vals = self.guide_values() if key == "guide" else [] if key == "untrained_guide" else self.values(key)
        if not vals:
            return None
        m, se = _mean_se(vals)
        return m, se, len(vals)

    def _versus_source(self, arm: str) -> str:
        """``; vs <source>: Δ …`` for an arm that varies another (``lr_from``), when both have results."""
        src = next((a.lr_from for a in self.cell.arms if a.name == arm), None)
        ours, ref = self.stat(arm), self.stat(src) if src else None
        if ours is None or ref is None:
            return ""
        return f"; vs {src}: " + _difference(ours, ref)[2]

    def agreement(self, arm: str) -> str:
        """Does (arm − baseline) point the way the paper's does? Metric-aware, with the sizes; a difference
        smaller than ``_RESOLVED`` standard errors is "not resolved" rather than a yes or no."""
        if arm == "baseline":
            return "reference"
        paper = self.cell.paper
        if paper is None or paper.get(arm) is None or paper.get("baseline") is None:
            return "n/a (no paper number)" + self._versus_source(arm)
        ours, base = self.stat(arm), self.stat("baseline")
        if ours is None or base is None:
            return "n/a (" + ("baseline" if base is None else "arm") + " not run)"
        d_ours, se, size = _difference(ours, base)
        d_paper, p_se, p_size = _difference(paper.get(arm), paper.get("baseline"))  # type: ignore[arg-type]
        better_ours = d_ours if self.higher else -d_ours
        better_paper = d_paper if paper.higher() else -d_paper
        size += f" vs paper {p_size}"
        if better_paper == 0 or better_ours == 0:
            return f"tie: {size}"
        if se is not None and abs(d_ours) < _RESOLVED * se:
            return f"not resolved (under {_RESOLVED} s.e.): {size}"
        agree = (better_ours > 0) == (better_paper > 0)
        if p_se is not None and abs(d_paper) < _RESOLVED * p_se:
            # the paper's own difference is inside its error bars: there is no direction to agree with
            return f"{'same' if agree else 'opposite'} sign, but the paper's Δ is under {_RESOLVED} s.e.: {size}"
        return f"{'yes' if agree else 'no'}: {size}"


def _difference(ours: tuple, ref: tuple) -> tuple[float, float | None, str]:
    """(Δ, its s.e., ``Δ +d ± se (k s.e.)``) of two (mean, s.e., …) statistics."""
    d = ours[0] - ref[0]
    se = math.sqrt(ours[1] ** 2 + ref[1] ** 2) if ours[1] is not None and ref[1] is not None else None
    text = (f"Δ {_signed(d)}" + (f" ± {_num(se)}" if se is not None else "")
            + (f" ({_num(abs(d) / se, 1)} s.e.)" if se else ""))
    return d, se, text


_RESOLVED = 2  # |Δ| / s.e. below which our direction is called unresolved


def _cell_views(study: Study, results: dict[tuple[str, str], ArmResult]) -> list[CellView]:
    from pairgraph.config import load_spec

    views = []
    for cell in study.cells:
        arms = {a.name: results[(cell.name, a.name)] for a in cell.arms}
        base: dict[str, Any] = {}
        try:
            base = load_spec(study.spec_path(cell), [*study.overrides, *cell.overrides]).resolved()
        except PairgraphError:
            stored = [r.spec for ar in arms.values() for r in ar.all_runs if r.spec]
            base = stored[0] if stored else {}
        metric = cell.metric
        if metric is None:
            prim = [(r.summary or {}).get("primary_metric") for ar in arms.values() for r in ar.seeds]
            prim = [p for p in prim if p]
            metric = prim[0] if prim else _default_metric(base)
        views.append(CellView(cell, arms, base, metric, _higher_is_better(metric)))
    return views


def _default_metric(spec: dict[str, Any]) -> str:
    kind = (spec.get("task") or {}).get("kind")
    try:
        from pairgraph.tasks import TASKS

        return TASKS.get(kind).primary_metric
    except Exception:  # noqa: BLE001 - an unknown task in an old record
        return "accuracy"


def _args_text(net: dict[str, Any]) -> str:
    model = str(net.get("model", "?"))
    args = dict(net.get("args") or {})
    preset = args.pop("preset", None)
    parts = []
    if preset is not None:
        expanded: dict[str, Any] = {}
        try:
            from pairgraph.zoo import resolve

            expanded = dict(resolve(model).presets.get(preset, {}))
        except Exception:  # noqa: BLE001 - a model not importable here: show the preset's name only
            expanded = {}
        inner = ", ".join(f"{k}={v}" for k, v in sorted(expanded.items()) if k not in args)
        parts.append(f"preset {preset}" + (f": {inner}" if inner else ""))
    parts += [f"{k}={v}" for k, v in sorted(args.items())]
    return f"{model} ({'; '.join(parts)})" if parts else model


def _task_text(task: dict[str, Any]) -> str:
    kind = task.get("kind", "?")
    opts = [f"{k}={v}" for k, v in sorted(task.items()) if k not in ("kind", "data_dir") and v is not None]
    return f"{kind} ({', '.join(opts)})" if opts else str(kind)


def _fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


# ---------------------------------------------------------------- the report: figures


def _settings(spec: dict[str, Any]) -> dict[str, Any]:
    g = spec.get("guidance") or {}
    return {"mode": g.get("mode", "guidance"), "until_step": g.get("until_step"),
            "guide_input": g.get("guide_input", "same"),
            "measure": (spec.get("similarity") or {}).get("measure", "cka"),
            "mapping": (spec.get("mapping") or {}).get("kind", "uniform"),
            "weights": (spec.get("guide") or {}).get("weights", "untrained"), "weight": g.get("weight", 1.0)}


def _arm_settings(study: Study, view: CellView, arm: Arm) -> dict[str, Any]:
    ar = view.arms[arm.name]
    stored = next((r.spec for r in ar.all_runs if r.spec), None)
    if stored is not None:
        return _settings(stored)
    from pairgraph.config import apply_overrides

    data = json.loads(json.dumps(view.base_spec)) if view.base_spec else {}
    try:
        apply_overrides(data, arm.all_overrides())
    except PairgraphError:
        pass
    return _settings(data)


def _plot_arms(groups: list[tuple[str, list[Any]]], path: Path, title: str) -> Path:
    """Two panels for named arms: task loss (train moving average, validation ○) and Σ dissimilarity."""
    from matplotlib.lines import Line2D

    from pairgraph.analysis import aggregate, band, new_figure, save_figure, smooth, smoothing_window

    fig = new_figure((13, 4.8), layout="constrained")
    ax_loss, ax_dis = fig.subplots(1, 2)
    longest = max((len(r.steps) for _, runs in groups for r in runs), default=1)
    w = smoothing_window(longest)
    handles = []
    any_dis = False
    for i, (name, runs) in enumerate(groups):
        color = f"C{i % 10}"
        curves = [(s, smooth(v, w)) for s, v in (r.series("task_loss") for r in runs) if s.size]
        if curves:
            band(ax_loss, aggregate(curves), color)
        vals = [([e["step"] for e in r.val], [e["loss"] for e in r.val]) for r in runs if r.val]
        if vals:
            import numpy as np

            va = aggregate(vals)
            ax_loss.errorbar(va.steps, va.mean, yerr=np.nan_to_num(va.sem) if np.isfinite(va.sem).any() else None,
                             color=color, marker="o", ms=5, mfc="white", lw=0.8, ls=":", capsize=3)
        dis = [(s, smooth(v, w)) for s, v in (r.total_dissimilarity() for r in runs) if s.size]
        if dis:
            any_dis = True
            band(ax_dis, aggregate(dis), color)
        measure = runs[0].measure.upper() if runs and dis else ""
        handles.append(Line2D([], [], color=color, lw=2, label=f"{name}" + (f" (1 − {measure})" if measure else "")
                              + f", n={len(runs)}"))
    ax_loss.set_title(f"task loss: train (moving avg {w}), validation (○); mean ± s.e.", fontsize=10)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("task loss")
    ax_dis.set_title("guidance dissimilarity Σ(1 − M) over mapped pairs (guided steps)", fontsize=10)
    ax_dis.set_xlabel("step")
    ax_dis.set_ylabel("Σ (1 − M)")
    if not any_dis:
        ax_dis.text(0.5, 0.5, "no guided steps logged", transform=ax_dis.transAxes, ha="center", color="0.4")
    for ax in (ax_loss, ax_dis):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=9, frameon=False)
    return save_figure(fig, path)


@dataclass
class _Figures:
    """Per figure kind: what was drawn (cell → markdown link) and what is missing (cell → why)."""

    drawn: dict[str, dict[str, str]] = field(default_factory=dict)
    missing: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, kind: str, cell: str, link: str) -> None:
        self.drawn.setdefault(kind, {})[cell] = link

    def miss(self, kind: str, cell: str, why: str) -> None:
        self.missing.setdefault(kind, {})[cell] = why


_FIG_KINDS = [
    ("curves", "Loss curves (paper Fig. 2): train and validation loss, and dissimilarity, mean ± s.e. over seeds"),
    ("dissimilarity", "Dissimilarity over training (paper Fig. 3): Σ(1 − M) per guided arm"),
    ("error_consistency", "Error consistency κ (paper Fig. 4, §5.4): seed-0 test predictions of every arm"),
    ("init150", "Guide disconnected after 150 steps (paper Fig. 5, §5.5)"),
    ("noise", "Guide fed N(0, 1) noise (paper Fig. 6, appendix E)"),
    ("rsa", "RSA vs CKA guidance (paper Fig. 9, appendix H)"),
    ("debiased", "Biased vs debiased CKA"),
    ("mapping", "Layer mappings compared (uniform / depth / learned)"),
]


def _comparisons(study: Study, view: CellView) -> dict[str, tuple[list[str], str | None]]:
    """For each comparison figure: (arms to draw, None) or ([], why not)."""
    settings = {a.name: _arm_settings(study, view, a) for a in view.cell.arms}
    base = _settings(view.base_spec)
    base_mapping = base["mapping"]

    def plain(s: dict[str, Any]) -> bool:
        return (s["mode"] == "guidance" and s["until_step"] is None and s["guide_input"] == "same"
                and s["measure"] == base["measure"] and s["mapping"] == base_mapping and s["weight"] == base["weight"])

    def refs(tested: list[str]) -> list[str]:
        """The baseline, and the plainly guided arms with the same guide weights as the tested arms."""
        weights = {settings[a]["weights"] for a in tested}
        return ([a for a, s in settings.items() if s["mode"] == "baseline"]
                + [a for a, s in settings.items() if plain(s) and s["weights"] in weights])
    tests = {
        "init150": lambda s: s["mode"] == "guidance" and s["until_step"] is not None,
        "noise": lambda s: s["mode"] == "guidance" and s["guide_input"] == "noise",
        "rsa": lambda s: s["mode"] == "guidance" and s["measure"] == "rsa",
        "debiased": lambda s: s["mode"] == "guidance" and s["measure"] == "debiased_cka",
        "mapping": lambda s: s["mode"] == "guidance" and s["mapping"] != base_mapping,
    }
    what = {"init150": "guidance.until_step", "noise": "guidance.guide_input=noise", "rsa": "similarity.measure=rsa",
            "debiased": "similarity.measure=debiased_cka", "mapping": "another mapping.kind"}
    out: dict[str, tuple[list[str], str | None]] = {}
    for kind, test in tests.items():
        arms = [a for a, s in settings.items() if test(s)]
        if not arms:
            out[kind] = ([], f"no arm with {what[kind]}")
            continue
        run = [a for a in arms if view.arms[a].seeds]
        if not run:
            out[kind] = ([], "arm " + ", ".join(arms) + " not run")
            continue
        out[kind] = ([a for a in refs(run) if a not in run] + run, None)
    return out


def _load_run_data(runs: list[StoredRun]) -> list[Any]:
    from pairgraph.analysis import load_run

    out = []
    for r in runs:
        try:
            out.append(load_run(r.path))
        except PairgraphError:
            continue  # an empty metrics.jsonl: nothing to draw
    return out


def _error_consistency(view: CellView, seed: int) -> tuple[list[str], Any, list[str]] | None:
    """κ between the arms' (and trained guides') predictions of ``seed``; (names, matrix, notes)."""
    from pairgraph.analysis import error_consistency_matrix

    preds: dict[str, Any] = {}
    labels: Any = None
    notes: list[str] = []
    sources: list[tuple[str, Path]] = []
    for name, ar in view.arms.items():
        run = next((r for r in ar.seeds if r.seed == seed), None)
        if run is None:
            continue
        if (run.path / "test_predictions.json").is_file():
            sources.append((name, run.path / "test_predictions.json"))
        if (run.path / "guide" / "test_predictions.json").is_file():
            sources.append((f"guide of {name}", run.path / "guide" / "test_predictions.json"))
    for name, path in sources:
        data = _read_json(path)
        if not data or "pred" not in data or "label" not in data:
            notes.append(f"{name}: {path.name} has no pred/label")
            continue
        if labels is None:
            labels = data["label"]
        elif data["label"] != labels:
            notes.append(f"{name}: predictions on other test examples, left out")
            continue
        preds[name] = data["pred"]
    if len(preds) < 2:
        return None
    try:
        names, m = error_consistency_matrix(preds, labels)
    except PairgraphError as e:
        notes.append(f"κ not computed: {e.message}")
        return [], None, notes
    return names, m, notes


# ---------------------------------------------------------------- the report


def _sweep_text(cell: Cell, study: Study) -> str:
    """The cell's lr sweep, or the pinned lrs when no arm of the cell sweeps."""
    if any(a.swept for a in cell.arms):
        return ", ".join(lr_tag(x) for x in (cell.lrs or study.lrs))
    return "none; pinned: " + ", ".join(f"{a.name} {lr_tag(a.lr)}" for a in cell.arms if a.lr is not None)


def report(study: Study | str | Path, output: str | Path = "docs/results.md", figures: str | Path | None = None,
           echo: Callable[[str], None] | None = None, readme: str | Path | None = None) -> Path:
    """Write the markdown report (byte-identical on every invocation) and its figures; returns the path.

    With ``readme``, also replace that file's ``<!-- results:begin -->`` … ``<!-- results:end -->``
    block with the headline table."""
    if not isinstance(study, Study):
        study = load_study(study)
    output = Path(output)
    fig_dir = Path(figures) if figures is not None else output.parent / "figures" / study.name
    results = collect(study)
    views = _cell_views(study, results)
    figs = _Figures()
    md: list[str] = []

    def link(path: Path) -> str:
        return Path(os.path.relpath(path, output.parent)).as_posix()

    # -- header
    all_runs = [r for ar in results.values() for r in ar.all_runs]
    done_runs = [r for r in all_runs if r.done]
    md += [f"# Results: study `{study.name}`", ""]
    if study.description:
        md += [study.description.strip(), ""]
    md += [(f"Generated by `pairgraph report {study.file.as_posix()}` from the run records in "
           f"`{study.results_path().as_posix()}/` only (summary.json, metrics.jsonl.gz, spec.yaml, env.json, "
           "test_predictions.json): no training, no data. Running it again gives this file byte for byte."), ""]
    lrs_txt = ", ".join(lr_tag(x) for x in study.lrs)
    md += [("**Protocol** (paper §4.3): for each cell and arm, train every learning rate of the sweep "
           f"({lrs_txt}; a cell may give its own) on seed {study.sweep_seed}, keep the lr with the lowest "
           f"best-validation loss, then train seeds {', '.join(map(str, study.seeds))} at it (the sweep's run is "
           "reused as its seed). Each run is evaluated on the validation split every `eval_every` steps; its test "
           "metric is that of the checkpoint with the lowest validation loss. Tables show mean ± standard error "
           "(std with ddof = 1, / √n, n = seeds that finished). The paper instead picks the epoch with the lowest "
           "seed-averaged validation loss; the per-run choice applies to every arm alike. Accuracies are in %. "
           "An arm agrees with the paper when (arm − baseline) has the sign of the paper's; a difference under "
           f"{_RESOLVED} standard errors (of the difference) is reported as *not resolved*, neither yes nor no. "
           "Where the paper gives standard errors and its own difference is under "
           f"{_RESOLVED} of them, it has no direction to agree with: the verdict then says only *same* or "
           "*opposite sign*. A chosen lr at either end of its sweep means the best lr may lie outside it."), ""]
    if study.overrides:
        md += ["Overrides applied to every run: " + ", ".join(f"`{o}`" for o in study.overrides) + ".", ""]

    n_arms = sum(len(c.arms) for c in study.cells)
    complete = sorted(f"{c}/{a}" for (c, a), ar in results.items() if ar.status == "done")
    md += [(f"**Coverage:** {len(complete)} of {n_arms} arms complete; {len(done_runs)} finished runs, "
           f"{sum(1 for r in all_runs if not r.done)} diverged.")]
    not_done = [(c, a, ar.status) for (c, a), ar in results.items() if ar.status != "done"]
    if not_done:
        md += ["Not complete: " + "; ".join(f"{c}/{a} ({s})" for c, a, s in not_done) + "."]
    md += [""]

    # -- machines
    md += ["## Machines", ""]
    machines: dict[tuple[str, ...], int] = {}
    for r in done_runs:
        e = r.env
        key = (str(e.get("processor", "?")), str(e.get("cpu_count", "?")), str(e.get("threads", "?")),
               str(e.get("torch", "?")), str(e.get("device", "?")), str(e.get("gpu", "")), str(e.get("platform", "?")))
        machines[key] = machines.get(key, 0) + 1
    if machines:
        md += _table(["processor", "cpu_count", "torch threads", "torch", "device", "gpu", "platform", "runs"],
                     [[*k[:5], k[5] or "—", k[6], str(n)] for k, n in sorted(machines.items())],
                     "llrllllr")
    else:
        md += ["No finished runs yet."]
    md += [""]

    # -- sizes
    md += ["## Sizes", "", f"Seeds: {', '.join(map(str, study.seeds))} (lr sweep on seed {study.sweep_seed}).", ""]
    rows = []
    for v in views:
        s = v.base_spec
        t = s.get("train") or {}
        steps = t.get("steps") if t.get("steps") is not None else f"{t.get('epochs') or 1} epochs"
        rows.append([v.cell.name, _task_text(s.get("task") or {}), _args_text(s.get("guide") or {}),
                     _args_text(s.get("target") or {}),
                     (f"{steps} steps, batch {t.get('batch_size', '?')}, eval every {t.get('eval_every', '?')}, "
                     f"{t.get('optimizer', '?')}"),
                     _sweep_text(v.cell, study)])
    md += _table(["cell", "task", "guide", "target", "training", "lr sweep"], rows, "llllll") + [""]

    # -- compute
    md += ["## Wall-clock time", "",
           ("Per run: `wall_seconds_this_session` of summary.json (the training loop; a resumed run counts its last "
           "session only), and the study's own clock around the run (compile, data, guide training included)."), ""]
    rows = []
    tot_train = tot_all = 0.0
    tot_n = 0
    for (c, a), ar in results.items():
        walls = [float(r.summary.get("wall_seconds_this_session") or 0.0) for r in ar.all_runs if r.done and r.summary]
        alls = [float(r.record.get("wall_seconds") or 0.0) for r in ar.all_runs if r.record]
        if not walls:
            continue
        tot_train += sum(walls)
        tot_all += sum(alls)
        tot_n += len(walls)
        rows.append([f"{c}/{a}", str(len(walls)), _num(sum(walls) / len(walls), 1), _fmt_seconds(sum(walls)),
                     _fmt_seconds(sum(alls)) if alls else "—"])
    if rows:
        rows.append(["**all**", str(tot_n), _num(tot_train / max(tot_n, 1), 1), _fmt_seconds(tot_train),
                     _fmt_seconds(tot_all)])
        md += _table(["cell/arm", "runs", "mean s/run (training)", "sum (training)", "sum (study clock)"], rows)
    else:
        md += ["No finished runs yet."]
    md += [""]

    # -- headline (also what `--readme` copies into the README)
    headline = _headline(study, views)
    md += ["## Headline", ""] + headline

    # -- paper-shaped tables
    image = [v for v in views if v.task_kind == "image_classification"]
    seq = [v for v in views if v.task_kind in ("copy_paste", "parity", "language_modeling")]
    md += _table2(image) + _table3(seq)

    # -- per cell
    md += ["## Cells", ""]
    for v in views:
        md += _cell_section(study, v)
        md += _cell_figures(study, v, fig_dir, figs, link)

    # -- figure index
    md += ["## Figures", ""]
    for kind, title in _FIG_KINDS:
        drawn = figs.drawn.get(kind, {})
        missing = figs.missing.get(kind, {})
        md += [f"**{title}.** " + ("Drawn for: " + ", ".join(f"[{c}]({drawn[c]})" for c in sorted(drawn)) + "."
                                   if drawn else "Not drawn for any cell.")]
        if missing:
            md += ["Not drawn: " + "; ".join(f"{c} ({missing[c]})" for c in sorted(missing)) + "."]
        md += [""]
    text = "\n".join(md).rstrip("\n") + "\n"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        raise PairgraphError(f"cannot write {output}: {e.strerror or e}", "pick another output path (-o)") from None
    if echo:
        echo(f"wrote {output} and {sum(len(d) for d in figs.drawn.values())} figures under {fig_dir}")
    if readme is not None:
        _fill_readme(Path(readme), study, output, headline, f"{len(complete)} of {n_arms} arms complete")
        if echo:
            echo(f"updated the headline table in {readme}")
    return output


README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"


def _headline(study: Study, views: list[CellView]) -> list[str]:
    """One row per cell and arm with finished seeds: ours (mean ± s.e.), the paper's, and the direction check."""
    rows = []
    for v in views:
        for arm in v.cell.arms:
            st = v.stat(arm.name)
            if st is None:
                continue
            rows.append([v.label, f"{_unit(v.metric)} {'↑' if v.higher else '↓'}", arm.name,
                         f"{st[2]}/{len(study.seeds)}", _pm(st[0], st[1]), _paper_cell(v.cell.paper, arm.name),
                         v.agreement(arm.name)])
    if not rows:
        return ["No arm has a finished seed yet.", ""]
    return _table(["cell", "test metric", "arm", "seeds", "ours: mean ± s.e.", "paper",
                   "agrees with the paper's direction vs baseline?"], rows, "lllrrrl") + [""]


def _fill_readme(path: Path, study: Study, output: Path, headline: list[str], coverage: str) -> None:
    """Replace the README's ``<!-- results:begin/end -->`` block with the headline table."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PairgraphError(f"cannot read {path}: {e.strerror or e}", "give the README's path to --readme") from None
    if README_BEGIN not in text or README_END not in text:
        raise PairgraphError(f"{path} has no {README_BEGIN} … {README_END} block",
                             "add the two marker lines where the headline table should go")
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    rel = Path(os.path.relpath(output, path.parent)).as_posix()
    block = [README_BEGIN, "", (f"Study `{study.name}` ({coverage}); generated by `pairgraph report "
                                f"{study.file.as_posix()} --readme {path.as_posix()}`, details in "
                                f"[{rel}]({rel}). Levels are not comparable with the paper's (CPU sizes; see the "
                                "Sizes section there); directions are."), "", *headline, README_END]
    path.write_text(head + "\n".join(block) + tail, encoding="utf-8")


def _paper_cell(paper: Any, key: str) -> str:
    if paper is None or paper.get(key) is None:
        return "—"
    m, se = paper.get(key)
    return _pm(m, se)


def _row_label(view: CellView, key: str) -> str:
    g, t = view.guide_label(), view.target_label()
    return {"guide": g, "untrained_guide": f"Untrained {g}", "baseline": t, "trained": f"{g} → {t}",
            "untrained": f"Untrained {g} → {t}"}[key]


def _row_order(label: str) -> tuple[int, str, int]:
    untrained = label.startswith("Untrained ")
    base = label.removeprefix("Untrained ")
    return ("→" in label, base, untrained)  # type: ignore[return-value]


def _ours(view: CellView, key: str) -> str:
    if key == "untrained_guide":
        return "not measured"
    if key != "guide" and key not in view.arms:
        return "not in study"
    st = view.stat(key)
    if st is None:
        return "not run"
    return _pm(st[0], st[1])


_PAPER_ROWS = ("guide", "untrained_guide", "baseline", "trained", "untrained")


def _table2(views: list[CellView]) -> list[str]:
    md = ["## Image classification (shaped like the paper's Table 2)", ""]
    if not views:
        return md + ["No image-classification cell in this study.", ""]
    md += [("Ours: test metric of the cell (CPU sizes; see Sizes). Paper: ImageNet top-5 validation accuracy. "
           "Compare directions, not levels. `guide` rows are the trained guide alone (ours: the guides the "
           "`trained` arm trained, one per seed)."), ""]
    rows = []
    for v in views:
        keys = [k for k in _PAPER_ROWS if k in v.arms or (v.cell.paper and v.cell.paper.get(k) is not None)
                or (k == "guide" and "trained" in v.arms)]
        for k in keys:  # the paper's order: guide, untrained guide, target, trained → target, untrained → target
            rows.append([_row_label(v, k), v.label, f"{_ours(v, k)}", _paper_cell(v.cell.paper, k),
                         _unit(v.metric) + (" ↑" if v.higher else " ↓")])
    md += _table(["experiment", "cell", "ours", "paper", "our metric"], rows, "llrrl") + [""]
    return md


def _table3(views: list[CellView]) -> list[str]:
    md = ["## Sequence modeling (shaped like the paper's Table 3)", ""]
    if not views:
        return md + ["No sequence cell in this study.", ""]
    md += ["Each entry: ours (paper). Ours at CPU sizes (see Sizes); compare directions, not levels.", ""]
    labels: dict[str, dict[str, str]] = {}
    for v in views:
        for k in _PAPER_ROWS:
            if k in v.arms or (v.cell.paper and v.cell.paper.get(k) is not None) or (k == "guide" and "trained" in v.arms):
                labels.setdefault(_row_label(v, k), {})[v.cell.name] = (
                    f"{_ours(v, k)} ({_paper_cell(v.cell.paper, k)})")
    head = ["experiment"] + [f"{v.label}: {_unit(v.metric)} {'↑' if v.higher else '↓'}" for v in views]
    rows = [[lab] + [labels[lab].get(v.cell.name, "—") for v in views] for lab in sorted(labels, key=_row_order)]
    return md + _table(head, rows) + [""]


def _cell_section(study: Study, v: CellView) -> list[str]:
    c = v.cell
    md = [f"### {v.label}", ""]
    paper = c.paper
    src = f" ({paper.source})" if paper and paper.source else ""
    md += [f"Spec `{c.spec}`" + (", overrides " + ", ".join(f"`{o}`" for o in c.overrides) if c.overrides else "")
           + f"; metric: test {_unit(v.metric)}, {'higher' if v.higher else 'lower'} is better"
           + (f"; paper: {paper.metric}{src}" if paper else "; the paper has no numbers for this cell") + ".", ""]
    rows = []
    for arm in c.arms:
        ar = v.arms[arm.name]
        if not ar.seeds:
            rows.append([arm.name, lr_tag(ar.chosen) if ar.chosen is not None else "—", "0",
                         ar.status, _paper_cell(paper, arm.name), "n/a (not run)"])
            continue
        m, se = _mean_se(v.values(arm.name)) if v.values(arm.name) else (math.nan, None)
        n_txt = f"{len(ar.seeds)}/{len(study.seeds)}" + (f", {len(ar.diverged_seeds)} diverged" if ar.diverged_seeds
                                                         else "")
        pinned = " (pinned)" if arm.lr is not None else f" (from {arm.lr_from})" if arm.lr_from else ""
        swept = [float(t) for t in ar.sweep]
        if arm.swept and ar.chosen is not None and len(swept) > 1 and ar.chosen in (min(swept), max(swept)):
            pinned = " (sweep's edge)"
        rows.append([arm.name, lr_tag(ar.chosen) + pinned, n_txt, _pm(m, se), _paper_cell(paper, arm.name),
                     v.agreement(arm.name)])
    md += _table(["arm", "lr (chosen)", "n seeds", f"test {_unit(v.metric)} mean ± s.e.", "paper",
                  "agrees with the paper's direction vs baseline?"], rows, "lrrrrl") + [""]
    if c.notes:
        md += ["**Notes.** " + " ".join(c.notes.split()), ""]
    if "trained" in v.arms and v.guide_values():
        m, se = _mean_se(v.guide_values())
        md += [f"The trained guides alone (one per seed of `trained`): {_pm(m, se)} (n={len(v.guide_values())})"
               + (f"; paper {_paper_cell(paper, 'guide')}" if paper and paper.get("guide") else "") + ".", ""]
    # the sweep
    sweeps = [(arm, v.arms[arm.name]) for arm in c.arms if arm.swept]
    if sweeps:
        lrs = sorted({t for _, ar in sweeps for t in ar.sweep}, key=float)
        rows = []
        for arm, ar in sweeps:
            row = [arm.name]
            for t in lrs:
                r = ar.sweep.get(t)
                if t not in ar.sweep:
                    row.append("")
                elif r is None:
                    row.append("—")
                elif not r.done:
                    row.append("diverged")
                else:
                    cell_txt = _num(_best_val(r.summary), 4)
                    row.append(f"**{cell_txt}**" if ar.chosen is not None and lr_tag(ar.chosen) == t else cell_txt)
            rows.append(row)
        md += [f"Sweep (seed {study.sweep_seed}): best validation loss per lr; bold = chosen; — = not run.", ""]
        md += _table(["arm"] + [f"lr {t}" for t in lrs], rows) + [""]
    return md


def _cell_figures(study: Study, v: CellView, fig_dir: Path, figs: _Figures, link: Callable[[Path], str]) -> list[str]:
    from pairgraph.analysis import plot_matrix, plot_runs

    md: list[str] = []
    name = v.cell.name
    ran = [(a.name, v.arms[a.name]) for a in v.cell.arms if v.arms[a.name].seeds]
    if not ran:
        for kind, _ in _FIG_KINDS:
            figs.miss(kind, name, "no arm run")
        return md
    missing_arms = [a.name for a in v.cell.arms if not v.arms[a.name].seeds]
    data = {a: _load_run_data(ar.seeds) for a, ar in ran}
    data = {a: d for a, d in data.items() if d}
    # Fig. 2/3: every arm's seeds
    if data:
        path = fig_dir / f"{name}-curves.png"
        plot_runs([r.path for a, _ in ran for r in v.arms[a].seeds if a in data], path)
        figs.add("curves", name, link(path))
        md += [f"![{name}: loss curves]({link(path)})", ""]
        if missing_arms:
            md += ["Not in the figures (not run): " + ", ".join(missing_arms) + ".", ""]
    guided = [(a, d) for a, d in data.items() if any(r.guidance_terms() for r in d)]
    if guided:
        path = fig_dir / f"{name}-dissimilarity.png"
        _plot_arms(guided, path, f"{v.label}: dissimilarity to the guide over training")
        figs.add("dissimilarity", name, link(path))
        md += [f"![{name}: dissimilarity]({link(path)})", ""]
    else:
        figs.miss("dissimilarity", name, "no guided arm run")
    # Fig. 4: error consistency
    ec = _error_consistency(v, study.seeds[0])
    if ec is None:
        figs.miss("error_consistency", name, "fewer than two arms with test_predictions.json")
    else:
        names, m, notes = ec
        if m is not None:
            path = fig_dir / f"{name}-error-consistency.png"
            plot_matrix(names, m, path, f"{v.label}: error consistency κ (seed {study.seeds[0]})")
            figs.add("error_consistency", name, link(path))
            md += [f"Error consistency κ between arms (seed {study.seeds[0]} test predictions):", ""]
            md += _table(["κ"] + names, [[a] + [_num(float(m[i, j])) for j in range(len(names))]
                                         for i, a in enumerate(names)]) + [""]
            md += [f"![{name}: error consistency]({link(path)})", ""]
        if notes:
            md += ["Error consistency notes: " + "; ".join(notes) + ".", ""]
    # comparisons
    titles = {"init150": "guide disconnected early", "noise": "guide fed noise", "rsa": "RSA vs CKA",
              "debiased": "biased vs debiased CKA", "mapping": "layer mappings"}
    for kind, (arms, why) in _comparisons(study, v).items():
        if why is not None:
            figs.miss(kind, name, why)
            continue
        groups = [(a, data[a]) for a in arms if a in data]
        path = fig_dir / f"{name}-{kind}.png"
        _plot_arms(groups, path, f"{v.label}: {titles[kind]} ({', '.join(a for a, _ in groups)})")
        figs.add(kind, name, link(path))
        md += [f"![{name}: {titles[kind]}]({link(path)})", ""]
    return md
