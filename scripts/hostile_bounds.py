"""How long reading and checking the worst specs pairgraph accepts (and the ones it refuses) takes.

Usage: .venv/bin/python scripts/hostile_bounds.py  (prints one line per case; numbers in docs/reliability.md)

Cases: the tiny test spec; the largest spec under the size cap (a 9,001-glob layer list: refused by the
glob bound); 1,000 globs (the most accepted); a 733-byte alias bomb; a file over the size cap. Each is
timed through ``pairgraph.compiler.pipeline.check`` (what ``pairgraph validate`` runs), after one warm-up
call so that imports are not counted; the best of 3.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import yaml

from pairgraph.compiler.pipeline import check
from pairgraph.config.yaml_io import MAX_YAML_BYTES
from pairgraph.errors import PairgraphError

TINY = {
    "name": "tiny", "task": {"kind": "copy_paste", "length": [2, 4], "size": 200},
    "guide": {"model": "transformer_decoder", "args": {"preset": "cpu", "num_layers": 2, "d_model": 32},
              "layers": {"include": ["blocks.*"]}},
    "target": {"model": "rnn", "args": {"num_layers": 2, "hidden": 32}},
    "train": {"batch_size": 16, "steps": 4, "eval_every": 2, "lr": 0.003, "seed": 1},
}
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def with_globs(n: int) -> str:
    spec = {**TINY, "guide": {**TINY["guide"], "layers": {"include": ["blocks.*"] + [f"b{i}" for i in range(n - 1)]}}}
    return yaml.safe_dump(spec, default_flow_style=None, width=10**9)


def largest_under_cap() -> str:
    n = 1
    while len(with_globs(n + 500).encode()) <= MAX_YAML_BYTES:
        n += 500
    return with_globs(n)


def timed(path: Path) -> tuple[float, str]:
    best, outcome = float("inf"), ""
    for _ in range(3):
        t0 = time.perf_counter()
        try:
            check(path, None, notify=None)
            outcome = "accepted"
        except PairgraphError as e:
            outcome = "refused: " + str(e).split(" — fix")[0][-90:]
        best = min(best, time.perf_counter() - t0)
    return best, outcome


def main() -> None:
    cases = {"tiny spec": yaml.safe_dump(TINY), "largest under the size cap": largest_under_cap(),
             "1,000 globs": with_globs(1000), "alias bomb": BOMB + "name: tiny\n",
             "over the size cap": yaml.safe_dump(TINY) + "#" * MAX_YAML_BYTES + "\n"}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm.yaml"
        warm.write_text(cases["tiny spec"])
        check(warm, None, notify=None)
        for name, text in cases.items():
            path = Path(tmp) / "spec.yaml"
            path.write_text(text)
            seconds, outcome = timed(path)
            print(f"{name:28s} {len(text.encode()):>7,} bytes  {seconds:5.2f} s  {outcome}")


if __name__ == "__main__":
    main()
