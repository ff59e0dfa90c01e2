"""Reading what a run left in a study's results folder: JSON records and the stored spec (None when
missing or unreadable), and the score the lr sweep ranks runs by."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_spec_yaml(path: Path) -> dict[str, Any] | None:
    """A stored (resolved) spec.yaml as a dict; None when it is missing or unreadable."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def best_val(summary: dict[str, Any] | None) -> float:
    """A run's best validation loss from its summary; inf when there is none (diverged, unreadable)."""
    v = (summary or {}).get("best_val_loss")
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.inf
    return v if math.isfinite(v) else math.inf
