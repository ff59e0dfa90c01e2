"""Reading run folders (``spec.yaml``, ``metrics.jsonl[.gz]``, ``summary.json``) and telling when two
runs are the same configuration."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pairgraph.config import OBJECTIVES, PRETRAINED, TRAIN, UNTRAINED, read_yaml
from pairgraph.config.diff import RUNTIME_FIELDS, flatten
from pairgraph.core.objectives import objective_class
from pairgraph.errors import PairgraphError, first_line

RUN_HINT = "pass run folders runs/<name>/<id> written by `pairgraph train`"

#: Spec fields that do not change what a run computes (see :mod:`pairgraph.config.diff`): results
#: that differ only here are one configuration: a study keeps them, plots group them.
NOT_CONFIG = RUNTIME_FIELDS
#: The seed: runs that differ only in it (and in NOT_CONFIG) are the seeds of one configuration. A study
#: compares a stored run with the run of the same seed, so there a different seed stays a difference.
SEED = "train.seed"


def config_fields(spec: Mapping[str, Any], ignore: frozenset[str] = NOT_CONFIG) -> dict[str, Any]:
    """A (resolved) spec as ``{"section.key": value}``, without the ``ignore`` fields."""
    return {k: v for k, v in flatten(dict(spec)).items() if k not in ignore}


@dataclass
class RunData:
    """What :func:`load_run` reads from a run folder."""

    path: Path
    spec: dict[str, Any]
    steps: list[dict[str, Any]]  # per-step training records, sorted by step
    val: list[dict[str, Any]]  # per-evaluation records (split "val"), sorted by step
    summary: dict[str, Any] = field(default_factory=dict)
    _terms: dict[str, tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)

    def _get(self, section: str, key: str, default: Any = None) -> Any:
        return (self.spec.get(section) or {}).get(key, default)

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or self.summary.get("name") or self.path.parent.name)

    @property
    def mode(self) -> str:
        return str(self._get("guidance", "mode") or self.summary.get("mode") or "?")

    @property
    def guide_weights(self) -> str:
        w = str(self._get("guide", "weights") or self.summary.get("guide_weights") or "?")
        if self.mode in OBJECTIVES and not objective_class(self.mode).calls_guide:
            return "no guide"  # the guide is never called: its weights do not matter
        if w not in (UNTRAINED, TRAIN, PRETRAINED):
            w = Path(w).name  # a checkpoint path: its file name is enough for a legend
        return w

    @property
    def seed(self) -> Any:
        s = self._get("train", "seed")
        return s if s is not None else self.summary.get("seed", "?")

    @property
    def measure(self) -> str:
        return str(self._get("similarity", "measure") or "cka")

    def base_label(self) -> str:
        return f"{self.name} · {self.mode} · {self.guide_weights}"

    def label(self) -> str:
        return f"{self.base_label()} · seed {self.seed}"

    def config_key(self) -> str:
        """The resolved spec without its seed (and NOT_CONFIG): equal keys = seeds of one configuration."""
        if not self.spec:
            return "label:" + self.base_label()
        flat = config_fields(self.spec, NOT_CONFIG | {SEED})
        return json.dumps(sorted((k, repr(v)) for k, v in flat.items()))

    def series(self, key: str, guided_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        recs = [r for r in self.steps if key in r and (r.get("guided") or not guided_only)]
        return np.array([r["step"] for r in recs], dtype=float), np.array([r[key] for r in recs], dtype=float)

    def guidance_terms(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-pair dissimilarity over the guided steps: ``{"guide->target": (steps, values)}``."""
        if self._terms is None:
            self._terms = self._read_terms()
        return self._terms

    def _read_terms(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out: dict[str, tuple[list[float], list[float]]] = {}
        for r in self.steps:
            if not r.get("guided"):
                continue
            for k, v in (r.get("terms") or {}).items():
                if "->" not in k:  # distill mode logs {"distill": ...}: not a dissimilarity
                    continue
                s, vals = out.setdefault(k, ([], []))
                s.append(r["step"])
                vals.append(v)
        return {k: (np.array(s, dtype=float), np.array(v, dtype=float)) for k, (s, v) in out.items()}

    def total_dissimilarity(self) -> tuple[np.ndarray, np.ndarray]:
        """Σ over pairs of the (unweighted) dissimilarity, at every guided step that logged all pairs."""
        terms = self.guidance_terms()
        if not terms:
            return np.array([]), np.array([])
        per_step: dict[float, list[float]] = {}
        for s, v in terms.values():
            for a, b in zip(s, v):
                per_step.setdefault(float(a), []).append(float(b))
        steps = sorted(k for k, vals in per_step.items() if len(vals) == len(terms))
        return np.array(steps), np.array([sum(per_step[k]) for k in steps])


def metrics_file(run: Path) -> Path | None:
    """A run folder's metrics: ``metrics.jsonl`` (training) or ``metrics.jsonl.gz`` (a study's stored results)."""
    for name in ("metrics.jsonl", "metrics.jsonl.gz"):
        if (run / name).is_file():
            return run / name
    return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The usable records of a metrics file; a damaged gzip file is a one-line error naming it, and
    lines that are not a record (cut by a kill, edited by hand, not UTF-8) are skipped."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, OSError, zlib.error) as e:
        raise PairgraphError(f"cannot read {path}: {first_line(e) or 'the file ends early'}",
                             "restore the file (it is truncated or not gzip)") from None
    records = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            rec = _usable(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if rec is not None:
            records.append(rec)
    return records


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _usable(rec: Any) -> dict[str, Any] | None:
    """A metrics record with an integer step and only numeric values (a validation row needs its loss)."""
    if not isinstance(rec, dict) or not _number(rec.get("step")) or not float(rec["step"]).is_integer():
        return None
    terms = rec.get("terms")
    clean = {k: v for k, v in rec.items() if _number(v) or (k == "split" and isinstance(v, str)) or k == "guided"}
    clean["step"] = int(rec["step"])
    if isinstance(terms, dict):
        clean["terms"] = {k: v for k, v in terms.items() if _number(v)}
    if clean.get("split") == "val" and "loss" not in clean:
        return None
    return clean


def _not_a_run(p: Path) -> PairgraphError:
    inner = sorted(m.parent for m in p.glob("*/metrics.jsonl*")) if p.is_dir() else []
    hint = (f"it holds runs: pass those instead, e.g. {inner[0]}" + (f" (and {len(inner) - 1} more)" if len(inner) > 1 else "")
            if inner else RUN_HINT)
    return PairgraphError(f"{p} is not a run folder (no metrics.jsonl)", hint)


def _read_spec(p: Path) -> dict[str, Any]:
    if not (p / "spec.yaml").exists():
        return {}
    spec, _ = read_yaml(p / "spec.yaml", "run spec")  # bounded; a damaged file is one line naming it
    spec = spec or {}
    return spec if isinstance(spec, dict) else {}


def _read_summary(p: Path) -> dict[str, Any]:
    if not (p / "summary.json").exists():
        return {}
    try:
        summary = json.loads((p / "summary.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return summary if isinstance(summary, dict) else {}


def load_run(path: str | Path) -> RunData:
    """Read a run folder (``spec.yaml``, ``metrics.jsonl``, ``summary.json``); PairgraphError if it is not one."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PairgraphError(f"run folder {p} does not exist", RUN_HINT)
    metrics = metrics_file(p) if p.is_dir() else None
    if metrics is None:
        raise _not_a_run(p)
    records = _read_jsonl(metrics)
    steps = {r["step"]: r for r in records if "split" not in r}  # last record of a step wins
    val = {r["step"]: r for r in records if r.get("split") == "val"}
    if not steps and not val:
        raise PairgraphError(f"run {p} has no metrics yet (metrics.jsonl is empty)",
                             "wait for its first step, or leave it out")
    return RunData(p, _read_spec(p), [steps[k] for k in sorted(steps)], [val[k] for k in sorted(val)], _read_summary(p))
