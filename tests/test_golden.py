"""Golden values: the first-step losses of shipped specs are pinned, so a silent change in
semantics (data, init, taps, mapping, similarity) fails a test. Re-pin only on purpose."""

from __future__ import annotations

from pathlib import Path

import pytest

import pairgraph
from pairgraph.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]

GOLDEN = {
    "rnn_from_transformer": (2.642519950866699, 0.08395266532897949),
    "transformer_from_rnn": (0.7806142568588257, 0.10692030191421509),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_first_step_losses_are_pinned(name, tmp_path):
    cp = pairgraph.compile(ROOT / "specs" / f"{name}.yaml", tmp_path, ["task.size=2000"], render=False, notify=None)
    pair = cp.build()
    x, y = get_task(cp.spec.task).datasets(0)["train"][:64]
    out = pair(x, y, 0)
    task, guidance = GOLDEN[name]
    assert out.task_loss.item() == pytest.approx(task, abs=1e-4)
    assert out.guidance_loss.item() == pytest.approx(guidance, abs=1e-4)
