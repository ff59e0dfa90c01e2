"""Numbers as the report writes them: metric units and directions, mean ± standard error, signed
differences, markdown tables, durations."""

from __future__ import annotations

import math


def higher_is_better(metric: str) -> bool:
    """Guessed from the name: losses, errors and perplexities go down, everything else up."""
    m = metric.lower()
    return not any(w in m for w in ("perplexity", "loss", "error", "ppl"))


def is_fraction(metric: str) -> bool:
    """Accuracies are stored as fractions and reported in %."""
    return metric in ("top1", "top5") or metric.endswith("accuracy")


def scale(metric: str, v: float) -> float:
    """A stored value in the report's units (fractions → %)."""
    return 100.0 * v if is_fraction(metric) else v


def unit(metric: str) -> str:
    """The metric's name with its unit, e.g. ``accuracy (%)``."""
    return f"{metric} (%)" if is_fraction(metric) else metric


def num(x: float | None, digits: int = 2) -> str:
    """Fixed-point text; — for None/NaN, ∞ for infinities, never ``-0.00``."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    s = f"{x:.{digits}f}"
    if float(s) == 0.0:
        s = f"{0.0:.{digits}f}"  # no "-0.00"
    return s


def signed(x: float, digits: int = 2) -> str:
    """:func:`num` with a + on positive values."""
    s = num(x, digits)
    return s if s.startswith("-") or s in ("—", "∞", "−∞") else "+" + s


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error (std with ddof=1 / √n); no s.e. for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var) / math.sqrt(n)


def pm(mean: float, se: float | None) -> str:
    """``mean ± se`` (or just the mean)."""
    return num(mean) + (f" ± {num(se)}" if se is not None else "")


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def table(head: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    """Markdown table lines; ``align`` has one of l/r/c per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(head) - 1)
    sep = ["---:" if a == "r" else ":---:" if a == "c" else "---" for a in align]
    return ["| " + " | ".join(_md_escape(h) for h in head) + " |", "| " + " | ".join(sep) + " |",
            *["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in rows]]


def fmt_seconds(s: float) -> str:
    """A duration in s, min or h."""
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"
