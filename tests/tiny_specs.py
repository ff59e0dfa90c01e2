"""Spec builders shared by the tests: the smallest pairs that still exercise the whole pipeline."""

from __future__ import annotations

import sys
from typing import Any


def copy_paste_pair(train: dict[str, Any], *, size: int = 400, d_model: int = 32, hidden: int = 32,
                    name: str = "tiny", **sections: Any) -> dict[str, Any]:
    """A 2-layer RNN guided by a 2-layer Transformer on copy-paste with lengths 2–4."""
    return {
        "name": name,
        "task": {"kind": "copy_paste", "length": [2, 4], "size": size},
        "guide": {"model": "transformer_decoder", "args": {"preset": "cpu", "num_layers": 2, "d_model": d_model},
                  "layers": {"include": ["blocks.*"]}},
        "target": {"model": "rnn", "args": {"num_layers": 2, "hidden": hidden}},
        "train": train,
        **sections,
    }


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """``pairgraph ARGS`` in this process: (exit code, stdout, stderr)."""
    from pairgraph.cli.main import main

    monkeypatch.setattr(sys, "argv", ["pairgraph", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
