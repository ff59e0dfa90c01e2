"""L6 — ``pairgraph study`` and ``pairgraph report``: the paper's protocol over cells × arms, and its report.

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
    close_seeds: [3, 4]    # also trained for an arm (and its baseline) whose |Δ| < close_below (3) pooled s.d.
    overrides: [train.steps=200]                   # --set-style, every run
    cells:
      - name: fcn_deep
        spec: specs/fcn_deep_from_resnet18.yaml
        paper: {metric: ImageNet top-5 accuracy (%), source: Table 2,
                values: {baseline: [1.65, 0.51], trained: [7.50, 1.51], untrained: [13.10, 0.72]}}
        arms: [baseline, untrained, trained, {name: slow, overrides: [guidance.weight=0.1], lr: 1.0e-4},
               {name: baseline_threads2, repeat: baseline, threads: 2}]   # the same runs on 2 threads: rounding

``grid: true`` trains every seed at every lr of a swept arm (no close_seeds) and chooses the lr with the
lowest mean best-validation loss over the seeds; runs go (lr, seed) point by point, a cell's arms side by
side. A cell with ``when_unconverged: <earlier cell>`` runs only if that cell's baseline, at its chosen lr,
had its best validation loss at its last evaluation in most of its seeds (e.g. the same cell trained longer).
When such a cell differs from its gate only in ``train.steps`` (more of them), each of its runs continues the
gate's finished run of the same arm, lr and seed — a copy, resumed for the remaining steps, which ends exactly
where a fresh run would — and its results name the origin (``continued_from.json``).
``untrainable_below: 20`` (grid studies) declares a trainability rule the report reads (``grid``).

``follow_ups: [{study: studies/other.yaml, report: docs/other.md, notes: ...}]`` names studies whose questions
grew out of this one: the report gives each a section from its own records, and notes and ``readme_status``
may quote them (``{{delta other:cell/arm}}``, ``{{runs other}}``, ``{{reading other}}``; ``prose``,
``follow_ups``).

Results land in ``results/<study>/<cell>/<arm>/lr<lr>-s<seed>/`` (summary.json, metrics.jsonl.gz,
spec.yaml, env.json, test_predictions.json when the run wrote one, study.json, and guide/ with the
trained guide's own record); never checkpoints. Training happens in ``runs/study/...``. A run whose
summary.json is in the results is done; a run that diverged (non-finite loss or weights) is recorded
as ``diverged.json`` and counts as done (an lr that diverges loses the sweep); anything else that
failed is retried by the next invocation, resuming from its last checkpoint when it has one.

``pairgraph report`` reads only the results (and the study/spec files) and writes a markdown file
that is byte-identical on every invocation, plus figures.

Modules: ``schema`` (the study file and :func:`load_study`), ``plan`` (what is done and left; the
lr choice), ``execute`` (jobs, the scheduler, storing runs), ``results`` (reading the results
folder), ``tables``/``formatting`` (markdown), ``prose`` (placeholders in notes), ``grid`` (grid studies),
``follow_ups``, ``figures`` and ``report``.
"""

from pairgraph.study.execute import StudyOutcome, run_study
from pairgraph.study.plan import ArmPlan, ArmState, Job, chosen_lr, format_plan, plan_study
from pairgraph.study.report import report
from pairgraph.study.results import ArmResult, CellView, StoredRun, collect
from pairgraph.study.schema import GUIDE_KEYS, PRESET_ARMS, Arm, Cell, PaperNumbers, Study, load_study

__all__ = [
    "GUIDE_KEYS", "PRESET_ARMS", "Arm", "ArmPlan", "ArmResult", "ArmState", "Cell", "CellView", "Job", "PaperNumbers",
    "StoredRun", "Study", "StudyOutcome", "chosen_lr", "collect", "format_plan", "load_study", "plan_study", "report",
    "run_study",
]
