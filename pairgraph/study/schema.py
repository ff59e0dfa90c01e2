"""The study file: its pydantic schema (:class:`Study` of :class:`Cell` s of :class:`Arm` s, with the
paper's numbers) and :func:`load_study`. The format is described in :mod:`pairgraph.study`."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pairgraph.config import read_yaml
from pairgraph.config.yaml_io import where
from pairgraph.errors import PairgraphError
from pairgraph.paths import NAME_PATTERN
from pairgraph.study.formatting import higher_is_better

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
_NAME = NAME_PATTERN  # study, cell and arm names become folders
STUDY_HINT = "see the study file format in the docstring of pairgraph/study/__init__.py"


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
        return higher_is_better(self.metric)


class Arm(_Strict):
    """One configuration of a cell: a predefined name, or a name with its own overrides."""

    name: str = Field(pattern=_NAME)
    overrides: list[str] = Field(default_factory=list, description="--set-style overrides (after a preset's).")
    lr: float | None = Field(default=None, gt=0, description="Pin the learning rate (no sweep).")
    lr_from: str | None = Field(default=None, pattern=_NAME,
                                description="Take the lr chosen by this other (swept) arm of the cell (no sweep).")
    repeat: str | None = Field(default=None, pattern=_NAME,
                               description="Rerun this other arm's seed runs (its overrides and lr) as they are, "
                               "usually with another `threads`: the spread float rounding alone makes (the report's "
                               "noise floor).")
    threads: int | None = Field(default=None, ge=1, description="Torch threads of this arm's runs (default: the "
                                "study's: 1 per process under --jobs N > 1, torch's own under --jobs 1).")

    @property
    def swept(self) -> bool:
        return self.lr is None and self.lr_from is None and self.repeat is None

    @property
    def source(self) -> str | None:
        """The arm whose chosen lr this arm takes: ``lr_from`` or ``repeat``."""
        return self.lr_from or self.repeat

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: list[str]) -> list[str]:
        return _check_overrides(v)

    @model_validator(mode="after")
    def _known(self) -> Arm:
        if self.name not in PRESET_ARMS and not self.overrides and self.repeat is None:
            close = difflib.get_close_matches(self.name, list(PRESET_ARMS), n=1)
            raise ValueError(
                f"arm {self.name!r} is not predefined and gives no overrides"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + "; predefined: " + ", ".join(PRESET_ARMS)
            )
        return self

    @model_validator(mode="after")
    def _one_lr_source(self) -> Arm:
        given = [k for k in ("lr", "lr_from", "repeat") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"arm {self.name!r} gives {'both ' if len(given) == 2 else ''}{' and '.join(given)}; "
                             "keep one")
        return self

    def all_overrides(self) -> list[str]:
        return [*PRESET_ARMS.get(self.name, []), *self.overrides]


class Cost(_Strict):
    """What a cell's runs cost on a GPU, for the dry-run's estimate: a benchmark record's measured step times
    (``pairgraph bench --device cuda``: seconds.target for baseline steps, seconds.guided for guided ones) times
    a stated ``scale`` for the difference in size."""

    bench: str = Field(description="A bench record (JSON), e.g. results/gpu/bench-rnn_from_transformer-cuda.json.")
    scale: float = Field(default=1.0, gt=0, description="Multiplier from the benchmarked pair to this cell's size; "
                         "say in `why` where it comes from.")
    why: str = Field(description="Where the measurement and the scale come from (printed by the dry-run).")
    steps_per_epoch: int | None = Field(default=None, ge=1, description="For epoch-based runs (train.epochs): "
                                        "optimizer steps per epoch.")


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
    cost: Cost | None = Field(default=None, description="GPU cost per step, for the dry-run's GPU-hour estimate.")
    notes: str | None = Field(default=None, description="Markdown the report prints under the cell's table: what "
                              "was tried and found (e.g. why a cell disagrees with the paper). Numbers quoted from "
                              "the tables are placeholders ({{mean baseline}}, {{delta untrained}}, …) the report "
                              "fills from the records (pairgraph/study/prose.py).")
    when_unconverged: str | None = Field(default=None, pattern=_NAME, description="Run this cell only if the "
                                         "named (earlier) cell's baseline had not reached its best validation loss: "
                                         "at its chosen lr, its best evaluation is its last in most of its seeds "
                                         "(e.g. a longer copy of that cell, whose runs then continue that cell's).")
    arms: list[Arm] = Field(min_length=1)

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: list[str]) -> list[str]:
        return _check_overrides(v)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def overrides_of(self, arm: Arm) -> list[str]:
        """An arm's overrides: its preset's and its own, after those of the arm it repeats."""
        return [*(self.arm(arm.repeat).all_overrides() if arm.repeat else []), *arm.all_overrides()]

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
        for a in self.arms:
            if a.repeat is None:
                continue
            src = by_name.get(a.repeat)
            if src is None or src is a or src.repeat is not None:
                raise ValueError(f"arm {a.name!r} of cell {self.name!r}: repeat {a.repeat!r} is not another arm of the "
                                 "cell that is not a repeat itself")
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


class FollowUp(_Strict):
    """Another study whose question grew out of this one; this study's report gives it a section."""

    study: str = Field(description="Its study file (relative to the current folder or to this study file).")
    report: str | None = Field(default=None, description="Where its own full report is written, for a link "
                               "(e.g. docs/trainability.md).")
    notes: str | None = Field(default=None, description="Markdown under its section; placeholders as in cell "
                              "notes, filled from the follow-up's own cells.")


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
    close_seeds: list[int] = Field(default_factory=list, description="Seeds added to an arm and to its cell's "
                                   "baseline when the arm's |Δ| from the baseline over `seeds` is under `close_below` "
                                   "pooled standard deviations (the paper trains 5 seeds), e.g. [3, 4].")
    close_below: float = Field(default=3.0, gt=0, description="What counts as close, in pooled standard deviations.")
    untrainable_below: float | None = Field(default=None, description="grid studies: the baseline counts as "
                                            "untrainable in a cell where its mean test metric at its chosen lr is "
                                            "below this (in the report's units); the report reads the rule.")
    grid: bool = Field(default=False, description="Train every seed at every lr of a swept arm's sweep (not only "
                       "at the chosen lr); the chosen lr is then the one with the lowest mean best-validation loss "
                       "over the seeds. Runs go lr by lr, seed by seed, alternating the cell's arms.")
    overrides: list[str] = Field(default_factory=list, description="--set-style overrides for every run.")
    readme_status: str | None = Field(default=None, description="Markdown that `pairgraph report --readme` writes "
                                      "between the README's <!-- status:begin --> and <!-- status:end --> lines, its "
                                      "placeholders ({{mean cell/arm}}, …) filled from the records "
                                      "(pairgraph/study/prose.py).")
    follow_ups: list[FollowUp] = Field(default_factory=list, description="Studies whose questions grew out of "
                                       "this one: the report gives each a section from its own records.")
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
        if set(self.close_seeds) & set(self.seeds) or len(set(self.close_seeds)) != len(self.close_seeds):
            raise ValueError("close_seeds must be new seeds, each once (not already in seeds)")
        if self.grid and self.close_seeds:
            raise ValueError("grid: true trains the seeds decided before running at every lr; remove close_seeds")
        names = [c.name for c in self.cells]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"cell name(s) {', '.join(dup)} appear twice")
        for i, c in enumerate(self.cells):
            gate = c.when_unconverged
            if gate is not None and (gate not in names[:i] or "baseline" not in {a.name for a in self.cell(gate).arms}):
                raise ValueError(f"cell {c.name!r}: when_unconverged {gate!r} is not an earlier cell with a baseline "
                                 f"arm (earlier cells: {', '.join(names[:i]) or 'none'})")
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
        return self.file_path(cell.spec, f"cell {cell.name!r}: spec file")

    def file_path(self, name: str, what: str) -> Path:
        """A file the study names (a cell's spec, a follow-up study), relative to the current folder or to
        the study file's folder."""
        p = Path(name).expanduser()
        candidates = [p] if p.is_absolute() or p.exists() else [p, self.file.parent / p]
        for c in candidates:
            if c.is_file():
                return c
        raise PairgraphError(f"{what} {name!r} not found",
                             f"give a path relative to the current folder or to {self.file.parent}")

    def sweep_lrs(self, cell: Cell, arm: Arm) -> list[float]:
        return list(cell.lrs or self.lrs) if arm.swept else []

    def overrides_for(self, cell: Cell, arm: Arm, lr: float | None = None, seed: int | None = None) -> list[str]:
        out = [*self.overrides, *cell.overrides, *cell.overrides_of(arm)]
        if lr is not None:
            out.append(f"train.lr={yaml_float(lr)}")
        if seed is not None:
            out.append(f"train.seed={seed}")
        return out


def yaml_float(x: float) -> str:
    """A float that yaml.safe_load reads back as the same float (PyYAML wants '1.0e-05', not '1e-05')."""
    r = repr(float(x))
    if "e" in r and "." not in r.split("e")[0]:
        r = r.replace("e", ".0e")
    return r


def lr_tag(lr: float) -> str:
    """An lr as folder names and tables show it (``1e-05``, ``0.0003``)."""
    return f"{float(lr):g}"


def run_folder(lr: float, seed: int) -> str:
    """The results (and runs) folder of one run: ``lr<lr>-s<seed>``."""
    return f"lr{lr_tag(lr)}-s{seed}"


#: matches :func:`run_folder` names: groups lr tag and seed
RUN_FOLDER = re.compile(r"^lr(.+)-s(-?\d+)$")


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
    """Read and validate a study file; any mistake becomes a one-line :class:`PairgraphError`.

    The YAML is read as specs are (:func:`pairgraph.config.read_yaml`): a missing file, bad UTF-8, a
    syntax error or a key written twice names the file and line."""
    p = Path(path)
    data, root = read_yaml(p, "study", "studies/paper_cpu.yaml")
    if not isinstance(data, dict):
        raise PairgraphError(f"{p}: a study file is a mapping (name:, lrs:, seeds:, cells:)", STUDY_HINT)
    try:
        study = Study.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e, p, root, data) from None
    study._file = p
    return study


def _validation_error(e: ValidationError, p: Path, root: Any, data: dict[str, Any]) -> PairgraphError:
    """The first error of a study that does not validate, as ``file:line: field: what`` with a fix."""
    err = e.errors()[0]
    loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and (x.startswith("function-") or x in
                                                                         ("float", "tuple[float, float]"))))
    at = where(str(p), root, loc)
    field_txt = _loc_text(loc, data)
    if err["type"] == "extra_forbidden":
        model: type[BaseModel] | None = Study if len(loc) == 1 else Cell if len(loc) == 3 else (
            Arm if len(loc) == 5 and loc[2] == "arms" else PaperNumbers if "paper" in loc else None)
        names = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else ("valid fields: " + ", ".join(names) if names else "remove it")
        return PairgraphError(f"{at}: {field_txt}: unknown field", hint)
    if err["type"] == "missing":
        return PairgraphError(f"{at}: {field_txt}: required field missing", f"add '{loc[-1]}:'")
    msg = err["msg"].removeprefix("Value error, ")
    return PairgraphError(f"{at}: {field_txt + ': ' if field_txt else ''}{msg}", STUDY_HINT)
