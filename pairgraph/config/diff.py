"""What differs between two resolved specs — and which differences change what a run computes."""

from __future__ import annotations

from typing import Any

import yaml

#: fields that change how a run executes but not what it computes (the guide cache is exact; train.log
#: says only where the scalars also go; train.compile, like train.device, changes float rounding only)
RUNTIME_FIELDS = frozenset({"train.device", "train.num_workers", "guidance.cache_guide", "guidance.cache_max_gb",
                            "train.log", "train.compile"})
#: fields a run may be continued with a new value of: it runs longer or checkpoints more often
EXTENDABLE_FIELDS = frozenset({"train.steps", "train.epochs", "train.checkpoint_every"})


def extendable_fields(resolved: dict[str, Any]) -> frozenset[str]:
    """EXTENDABLE_FIELDS for a run of this resolved spec: not its length when its lr schedule spans the whole
    run (cosine decays to min_lr at the last step: a longer run would have had other lrs all along)."""
    schedule = resolved.get("train", {}).get("schedule") or {}
    if isinstance(schedule, dict) and schedule.get("kind") == "cosine":
        return EXTENDABLE_FIELDS - {"train.steps", "train.epochs"}
    return EXTENDABLE_FIELDS


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` → ``{"train.lr": 1}`` (an empty mapping is a leaf)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict) and d:
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def changed_fields(a: dict[str, Any], b: dict[str, Any], ignore: frozenset[str] = RUNTIME_FIELDS) -> dict[str, tuple[Any, Any]]:
    """Dotted fields where resolved specs ``a`` and ``b`` differ (as YAML reads them back) → (a's, b's)."""
    fa, fb = flatten(yaml.safe_load(yaml.safe_dump(a))), flatten(yaml.safe_load(yaml.safe_dump(b)))
    keys = sorted((set(fa) | set(fb)) - ignore)
    return {k: (fa.get(k), fb.get(k)) for k in keys if fa.get(k) != fb.get(k)}


def spec_diff(a: dict[str, Any], b: dict[str, Any], ignore: frozenset[str] = RUNTIME_FIELDS) -> list[str]:
    """``field: old → new`` for every field where two resolved specs differ in what they compute."""
    return [f"{k}: {old!r} → {new!r}" for k, (old, new) in changed_fields(a, b, ignore).items()]
