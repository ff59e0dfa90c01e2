"""The ``pairgraph`` command (Typer): arguments, printing and exit codes over the Python API; each command
imports what it needs when it runs (start-up time)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from pairgraph.cli.analysis import inspect, plot, similarity
from pairgraph.cli.demo import demo
from pairgraph.cli.failures import internal_error, report_eof
from pairgraph.cli.options import SetOpt, console, err_console
from pairgraph.cli.starter import init
from pairgraph.errors import Interrupted, PairgraphError

app = typer.Typer(
    name="pairgraph",
    help="Compile and train guide→target pairs: an 'untrainable' network aligned layer by layer with a frozen guide.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.command()
def validate(spec: Annotated[Path, typer.Argument(help="A spec YAML file.")], set_: SetOpt = None) -> None:
    """Check a spec as far as it can be checked without data: fields, models (built on the meta device),
    layer selections, guide checkpoint and mapping; writes nothing."""
    from pairgraph.compiler.pipeline import check

    c = check(spec, set_, notify=lambda m: err_console.print(f"[yellow]{m}[/yellow]"))
    s = c.spec
    mapped = (f"{len(c.correspondence)} pairs ({c.correspondence.kind})" if c.correspondence is not None
              else f"mapping {s.mapping.kind!r} is measured on data when compiled")
    console.print(f"[green]ok[/green] {spec}: pair {s.name!r}: {s.guide.model} ({len(c.guide)} taps) → "
                  f"{s.target.model} ({len(c.target)} taps) on {s.task['kind']}; {mapped}", highlight=False)




@app.command()
def schema(output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write to a file.")] = None) -> None:  # noqa: UP045
    """Print the JSON Schema of specs (point your editor's YAML plugin at it)."""
    from pairgraph.config import json_schema
    from pairgraph.paths import atomic_write

    text = json.dumps(json_schema(), indent=2)
    if output:
        atomic_write(output, text + "\n")
        console.print(f"wrote {output}")
    else:
        sys.stdout.write(text + "\n")


@app.command()
def zoo() -> None:
    """List the zoo's models with their presets."""
    from rich.table import Table

    from pairgraph.zoo import MODELS, list_models

    table = Table(title="pairgraph zoo (also: torchvision:<name>, package.module:factory)")
    for col in ("model", "input", "presets", "description"):
        table.add_column(col)
    for name in list_models():
        entry = MODELS.get(name)
        presets = ", ".join(f"{k}" for k in entry.presets)
        table.add_row(name, entry.input, presets, entry.description)
    console.print(table)


@app.command("compile")
def compile_cmd(
    spec: Annotated[Path, typer.Argument(help="A spec YAML file.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output folder (default build/<name>).")] = None,  # noqa: UP045
    set_: SetOpt = None,
    render: Annotated[bool, typer.Option(help="Render mapping.png/svg.")] = True,
    all_rows: Annotated[bool, typer.Option("--all", help="Show every pair in the terminal view.")] = False,
) -> None:
    """Trace guide and target, build the layer mapping, generate guided_pair.py and the renders."""
    from pairgraph.compiler.pipeline import compile as compile_pair
    from pairgraph.compiler.render import print_mapping

    cp = compile_pair(spec, output, set_, render=render, notify=lambda m: err_console.print(f"[yellow]{m}[/yellow]"))
    print_mapping(cp.guide, cp.target, cp.correspondence, console, None if all_rows else 40)
    _print_shared_taps(cp)
    console.print(f"[green]compiled[/green] {cp.spec.name} → {cp.out_dir}/ (guided_pair.py, mapping.json"
                  + (", mapping.png, mapping.svg, mapping.html)" if render else ")"), soft_wrap=True)
    import shlex

    sets = "".join(f" --set {shlex.quote(o)}" for o in set_ or [])
    console.print(f"next: pairgraph train {shlex.quote(str(spec))}{sets}", soft_wrap=True, highlight=False)


def _print_shared_taps(cp: Any) -> None:
    """Guide taps whose CKA is provably another's (computed once in training). Known now for an untrained
    guide (built here, seeded as training builds it); for other weights the trainer says so when it starts."""
    from pairgraph.core.objectives import objective_class
    from pairgraph.core.shared_taps import describe

    if cp.spec.guide.weights != "untrained" or not objective_class(cp.spec.guidance.mode).compares_similarity:
        return

    shared = cp.build("cpu").guide_aliases
    if shared:
        console.print(f"computed once: {len(shared)} guide taps are BatchNorms that rescale their input uniformly, "
                      f"so their CKA is their input's: {describe(shared, 4)}", soft_wrap=True, highlight=False)


@app.command()
def train(
    spec: Annotated[Optional[Path], typer.Argument(help="A spec YAML, or a compiled folder (build/<name>).")] = None,  # noqa: UP045
    set_: SetOpt = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue a killed run: runs/<name>/<id>.")] = None,  # noqa: UP045
    runs_dir: Annotated[Path, typer.Option(help="Where runs are written.")] = Path("runs"),
    run_id: Annotated[Optional[str], typer.Option(help="Run folder name (default: time-mode-seed).")] = None,  # noqa: UP045
    progress: Annotated[bool, typer.Option(help="Show a progress bar (evaluation lines and notices are printed either way).")] = True,
    nproc: Annotated[int, typer.Option(help="Processes on this machine (torchrun + DDP; gloo on CPU, NCCL on GPU).")] = 1,
) -> None:
    """Train a pair (compiling the spec on the fly) and print the run's summary."""
    import os

    from pairgraph.compiler.pipeline import compile as compile_pair
    from pairgraph.core import distributed
    from pairgraph.training import Trainer, resume_run

    if nproc < 1:
        raise PairgraphError(f"--nproc {nproc} is not a number of processes", "pass --nproc 1 or more")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _check_before_launch(spec, set_, resume, nproc)
        _relaunch_with_torchrun(nproc, run_id)
        return

    if resume is not None:
        summary = resume_run(resume, progress=progress, overrides=set_, spec=spec, verbose=True,
                             notify=lambda m: err_console.print(m, highlight=False))
    else:
        if spec is None:
            raise PairgraphError("no spec given", "pass a spec file: pairgraph train specs/rnn_from_transformer.yaml")
        if spec.is_dir():
            spec = spec / "spec.yaml"
        compiled = compile_pair(spec, None, set_, render=False,
                                     notify=lambda m: err_console.print(f"[yellow]{m}[/yellow]"))
        summary = Trainer(compiled, runs_dir, run_id, progress=progress, verbose=True).run()
    _print_summary(summary)
    if distributed.from_env().enabled:  # a torchrun worker, its run finished and saved: exit 0, not gloo's abort
        distributed.end_worker(0)


def _check_before_launch(spec: Path | None, set_: list[str] | None, resume: Path | None, nproc: int) -> None:
    """Fail in this process, in one line, before starting workers that would each fail the same way."""
    from pairgraph.compiler.pipeline import check

    if resume is not None:
        return  # the run folder's spec was checked when the run started
    if spec is None:
        raise PairgraphError("no spec given", "pass a spec file: pairgraph train specs/rnn_from_transformer.yaml")
    checked = check(spec / "spec.yaml" if spec.is_dir() else spec, set_, notify=None)
    if checked.spec.train.batch_size % nproc:
        raise PairgraphError(f"train.batch_size {checked.spec.train.batch_size} does not divide over {nproc} processes",
                             "make the (global) batch size a multiple of --nproc")


def _relaunch_with_torchrun(nproc: int, run_id: str | None) -> None:
    """``--nproc N`` is ``torchrun --standalone --nproc_per_node N -m pairgraph train …`` (same arguments).

    The workers print their own one-line errors; a failed worker ends this command with its exit
    code and one line, not torchrun's traceback.
    """
    import os
    import time

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = sys.argv[1:]
    i = args.index("--nproc") if "--nproc" in args else next(k for k, a in enumerate(args) if a.startswith("--nproc="))
    del args[i: i + (2 if args[i] == "--nproc" else 1)]
    if run_id is None:  # one folder for all ranks
        args += ["--run-id", time.strftime("%Y%m%d-%H%M%S") + f"-ddp{nproc}-p{os.getpid()}"]
    torchrun = ["--standalone", f"--nproc_per_node={nproc}", "-m", "pairgraph", *args]
    err_console.print("running: torchrun " + " ".join(torchrun), highlight=False)
    try:
        run(parse_args(torchrun))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode if isinstance(failure.exitcode, int) and failure.exitcode > 0 else 1
        err_console.print(f"[red]error:[/red] {len(e.failures)} of {nproc} worker processes failed (first: rank {rank}, "
                          f"exit code {failure.exitcode}); its message is above", highlight=False)
        raise typer.Exit(code) from None


def _print_summary(summary: dict) -> None:
    if "test" not in summary:  # a non-zero rank of a distributed run: rank 0 reports
        return
    test = summary.get("test") or {}
    shown = "  ".join(f"{k} {v:.4g}" for k, v in test.items())
    console.print(f"[green]done[/green] {summary['run_dir']}: best val loss {summary['best_val_loss']:.4f} "
                  f"at step {summary['best_step']}; test {shown}", soft_wrap=True)
    console.print(f"best checkpoint: {summary['run_dir']}/checkpoints/best.safetensors   next: pairgraph plot "
                  f"{summary['run_dir']} -o {summary['run_dir']}/curves.png", soft_wrap=True, highlight=False)


@app.command()
def bench(
    spec: Annotated[Path, typer.Argument(help="A spec YAML file.")],
    set_: SetOpt = None,
    batch_size: Annotated[int, typer.Option(help="Batch size of the main measurement.")] = 256,
    steps: Annotated[int, typer.Option(help="Timed rounds (median reported) after warm-up.")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed rounds first.")] = 3,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    memory: Annotated[bool, typer.Option(help="Measure peak memory (the CUDA allocator's, or one subprocess per "
                                              "variant on a CPU).")] = True,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes for the overhead table.")] = "",
    pairs: Annotated[str, typer.Option(help="Comma-separated numbers of mapped pairs for the overhead table.")] = "",
    cache_pool: Annotated[int, typer.Option(help="Also time the guided step with the guide cached over a pool of "
                                                 "N examples (guidance.cache_guide); 0 = off.")] = 0,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the networks of every variant.")] = False,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Run every variant's networks and image "
                                                "inputs in the channels-last memory format.")] = False,
    precision: Annotated[str, typer.Option(help="fp32 | bf16: the networks of every variant under bf16 autocast "
                                                "(as train.precision); the similarity's own precision is "
                                                "--set similarity.precision=…")] = "fp32",
    ops_only: Annotated[bool, typer.Option("--ops-only", help="Only count each variant's ATen ops and host syncs "
                                           "per step (no timing: fine on a busy machine); --pairs adds rows.")] = False,
    profile: Annotated[bool, typer.Option("--profile", help="Only profile one step of each variant under "
                                          "torch.profiler: kernels, launches, device idle time, ATen ops.")] = False,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the record as JSON.")] = None,  # noqa: UP045
) -> None:
    """Time the guided step against its floors (target step + guide forward, and + the gram work alone) and a
    naive implementation; count each step's ATen ops and host syncs."""
    from pairgraph.bench import bench as run_bench
    from pairgraph.bench import ops_record

    def ints(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise PairgraphError(f"not a comma-separated list of integers: {text!r}", "write e.g. 64,256,1024") from None

    if (ops_only or profile) and (compile_ or channels_last or batch_sizes or (profile and (pairs or ops_only))):
        raise PairgraphError("--ops-only and --profile each look at the eager step at one batch size",
                             "drop --compile, --channels-last and --batch-sizes (--profile: and --pairs), and use "
                             "one of the two")
    if output:
        from pairgraph.paths import refuse_replacing

        refuse_replacing(output, b"", [spec], "-o")  # the record is never the spec it measured
    if profile:
        from pairgraph.bench import profile_record

        rec = profile_record(str(spec), batch_size, device, set_, precision, cache_pool, warmup=warmup)
        _print_profile(rec, spec)
    elif ops_only:
        rec = ops_record(str(spec), batch_size, device, set_, ints(pairs), cache_pool, precision)
        _print_ops(rec, spec)
    else:
        rec = run_bench(str(spec), batch_size, steps, warmup, device, set_, memory, ints(batch_sizes), ints(pairs),
                        cache_pool, compile_, channels_last, precision)
        _print_bench(rec, spec)
    if output:
        from pairgraph.errors import io_error
        from pairgraph.paths import atomic_write

        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise io_error(e, output.parent, "create") from None
        atomic_write(output, json.dumps(rec, indent=2) + "\n")
        console.print(f"wrote {output}")


def _print_bench(rec: dict[str, Any], spec: Path) -> None:
    sec = rec["seconds"]

    def ms(v: str) -> str:
        return f"{sec[v] * 1e3:.1f} ms" if v in sec else "not timed"

    console.print(f"{spec} · {rec['device']} · batch {rec['batch_size']} · {rec['pairs']} pairs · median of "
                  f"{rec['steps']} steps · networks {rec['precision']}, similarity {rec['similarity_precision']}"
                  + (f" · torch.compile (first round {rec['first_round_seconds']:.0f} s)" if rec["compiled"] else "")
                  + (" · channels_last" if rec["channels_last"] else ""))
    console.print(f"  (a) target step {ms('target')}   (b) guide forward {ms('guide')}   (g) grams alone {ms('gram')}   "
                  f"(c) guided step {ms('guided')}   (d) naive step {ms('naive')}")
    console.print(f"  overhead c/(a+b) = {rec['overhead']:.3f}"
                  + (f"   c/(a+b+g) = {rec['overhead_gram']:.3f}" if rec["overhead_gram"] is not None else "")
                  + (f"   speedup d/c = {rec['speedup']:.2f}" if rec["speedup"] is not None else "")
                  + (f"   peak memory c/(a+b) = {rec['memory_ratio']:.3f}" if "memory_ratio" in rec else ""))
    if "cache" in rec:
        c = rec["cache"]
        console.print(f"  (e) guided step, guide cached over {c['pool']} examples: {ms('cached')}   "
                      f"e/(a+b) = {c['overhead']:.3f}   e/a = {c['vs_target']:.3f}"
                      + (f"   speedup d/e = {c['speedup']:.2f}" if c["speedup"] is not None else "")
                      + (f"   peak memory e/(a+b) = {c['memory_ratio']:.3f}" if "memory_ratio" in c else ""))
        console.print(f"      cache {c['bytes'] / 2**20:.0f} MiB, built in {c['build_seconds']:.1f} s")

    def row(r: dict[str, Any]) -> str:
        return (f"overhead {r['overhead']:.3f}" + (f", c/(a+b+g) {r['overhead_gram']:.3f}" if "overhead_gram" in r else "")
                + (f", cached {r['overhead_cached']:.3f}, e/a {r['cached_vs_target']:.3f}" if "overhead_cached" in r
                   else ""))

    if rec["ops"] is not None:
        console.print("  " + _ops_line(rec["ops"]))
    for r in rec["by_batch_size"]:
        console.print(f"  batch {r['batch_size']:>5}: {row(r)}")
    for r in rec["by_pairs"]:
        console.print(f"  {r['pairs']:>3} pairs: {row(r)}, alignment {r['alignment_ops']:,} ops")


def _ops_line(ops: dict[str, Any]) -> str:
    """ATen ops (host syncs) per step of each variant, and the alignment's own: c − a − b (and e − a)."""
    parts = [f"{v} {o['ops']:,} ({o['syncs']})" for v, o in ops.items()]
    return "ATen ops (host syncs) per step: " + ", ".join(parts)


def _print_ops(rec: dict[str, Any], spec: Path) -> None:
    console.print(f"{spec} · {rec['device']} · batch {rec['batch_size']} · {rec['pairs']} pairs · networks "
                  f"{rec['precision']}, similarity {rec['similarity_precision']}")
    console.print("  " + _ops_line(rec["ops"]))
    for r in rec["by_pairs"]:
        console.print(f"  {r['pairs']:>3} pairs: alignment {r['alignment']['ops']:,} ops ({r['alignment']['syncs']} syncs)")


def _print_profile(rec: dict[str, Any], spec: Path) -> None:
    console.print(f"{spec} · {rec['device']} · batch {rec['batch_size']} · {rec['pairs']} pairs · median of "
                  f"{rec['steps']} profiled steps · kernels: {rec['kernels_are']}")
    for v, r in rec["variants"].items():
        if "wall_seconds" in r:
            console.print(f"  {v}: {r['kernels']:,.0f} kernels, {r['launches']:,.0f} launch calls, kernels "
                          f"{r['kernel_seconds'] * 1e3:.2f} ms, wall {r['wall_seconds'] * 1e3:.2f} ms, idle "
                          f"{r['idle_seconds'] * 1e3:.2f} ms ({r['idle_fraction']:.0%}); {r['aten']['ops']:,} ATen ops")
        else:
            console.print(f"  {v}: {r['kernels']:,.0f} kernels, {r['kernel_seconds'] * 1e3:.2f} ms")


@app.command("study")
def study_cmd(
    study_file: Annotated[Path, typer.Argument(help="A study YAML (e.g. studies/paper_cpu.yaml).")],
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Runs in parallel (processes; torch threads = cores // N).")] = 1,
    only: Annotated[Optional[list[str]], typer.Option("--only", help="Only CELL or CELL/ARM (repeatable).")] = None,  # noqa: UP045
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (done / left) and train nothing.")] = False,
) -> None:
    """Run a study: per cell and arm, sweep the lrs on one seed, keep the best-validation lr, train every seed.

    Finished runs (summary.json in the results folder) are skipped; a crashed run is retried.
    """
    from pairgraph.study import format_plan, load_study, plan_study, run_study

    st = load_study(study_file)
    if dry_run:
        sys.stdout.write(format_plan(plan_study(st, only)) + "\n")
        return
    outcome = run_study(st, jobs=jobs, only=only, echo=lambda m: console.print(m, highlight=False, soft_wrap=True))
    console.print(f"[green]study {st.name}[/green]: {outcome.trained} runs finished, {outcome.diverged} diverged, "
                  f"{len(outcome.failed)} failed"
                  + (f", {outcome.busy} left to the other process training them" if outcome.busy else "")
                  + f"; results in {st.results_path()}", soft_wrap=True)
    if outcome.failed:
        for line in outcome.failed:
            err_console.print(f"[red]failed:[/red] {line}", highlight=False, soft_wrap=True)
        raise PairgraphError(f"{len(outcome.failed)} run(s) failed", "fix the cause and run the same command again "
                             "(finished runs are skipped, failed ones retried)")


@app.command("report")
def report_cmd(
    study_file: Annotated[Path, typer.Argument(help="A study YAML whose results to report.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Markdown file to write.")] = Path("docs/results.md"),
    figures: Annotated[Optional[Path], typer.Option(help="Figure folder (default <output folder>/figures/<study>).")] = None,  # noqa: UP045
    readme: Annotated[Optional[Path], typer.Option(help="Also fill this file's <!-- results:begin/end --> block "  # noqa: UP045
                                                        "with the headline table (e.g. README.md).")] = None,
) -> None:
    """Write the study's markdown report and figures from its results folder only (no training, no data)."""
    from pairgraph.paths import refuse_replacing
    from pairgraph.study import report

    refuse_replacing(output, b"", [study_file], "-o")  # a report is never its own study file
    report(study_file, output, figures, echo=lambda m: console.print(m, highlight=False, soft_wrap=True),
           readme=readme)


app.command()(plot)
app.command()(inspect)
app.command()(similarity)
app.command()(demo)
app.command()(init)


report_eof(app)


def main() -> None:
    """Entry point: exit 0 for success only; a user mistake is one line on stderr and exit 2; an
    interrupt exits 130 (Ctrl-C) or 143 (SIGTERM); anything else is one line and exit 1."""
    try:
        code = app(standalone_mode=False)  # returns the exit code of a typer.Exit (130 for Ctrl-C)
    except Interrupted as e:
        label = "terminated" if e.exit_code == 143 else "interrupted"
        text = str(e).removeprefix("interrupted ").removeprefix("terminated (SIGTERM) ")
        err_console.print(f"[yellow]{label}:[/yellow] {escape(text)}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except PairgraphError as e:
        err_console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort as e:  # click's: for Ctrl-C outside training too
        sys.exit(130 if isinstance(e.__cause__, KeyboardInterrupt) else 1)
    except Exception as e:  # noqa: BLE001 - usage errors (click's), then anything else: one line
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        internal_error(e, err_console)
    if isinstance(code, int) and code:
        if code == 130:
            err_console.print("interrupted")
        sys.exit(code)


if __name__ == "__main__":
    main()
