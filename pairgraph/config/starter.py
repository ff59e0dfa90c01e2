"""``pairgraph init``: a commented starting spec for a guide → target pair on a task.

    pairgraph init --guide resnet18 --target deep_fcn --task image_classification
    pairgraph init --guide transformer_decoder --target rnn --task copy_paste -o specs/mine.yaml
    pairgraph init --guide hf:gpt2 --target rnn --task language_modeling --name gpt2_rnn --force

The inputs are checked first, each in one line with the messages a spec gets (did-you-mean from the
registries): the task kind, both models (resolved as a spec's ``model:`` is), a zoo model's input
kind against the task's, and the output path (``<guide>_to_<target>.yaml`` in the working folder by
default; an existing file is kept unless ``force``). The text is then written from a template (every
section with a comment on what it does and its main alternatives, the choices listed from the
registries), read back with the spec loader, and only then written. Sizes are a 2-core CPU's: the
zoo's ``cpu`` preset, a small transformers config, the task sized as the example specs are.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any, NamedTuple, get_args

import yaml

from pairgraph.config.loading import parse_spec
from pairgraph.config.names import (
    MAPPERS,
    MEASURES,
    MODELS,
    OBJECTIVES,
    OPTIMIZERS,
    TASKS,
    add_import_root,
    resolve_model,
)
from pairgraph.config.spec import LayerSelection, PairSpec
from pairgraph.config.yaml_io import parse_yaml
from pairgraph.errors import PairgraphError
from pairgraph.paths import atomic_write, check_name

#: the task options a starter sets, by kind, with a comment each (sized as specs/*.yaml)
TASK_STARTS: dict[str, list[tuple[str, Any, str]]] = {
    "image_classification": [
        ("dataset", "cifar10", "cifar10 | mnist1d | folder:<path> (train/ and test/) | hf:<name>"),
        ("train_size", 10000, "a fixed subset of the training images (null: all of them)"),
        ("val_size", 2000, "validation images carved from the training set"),
        ("test_size", 2000, "test images (null: all)"),
    ],
    "copy_paste": [
        ("tokens", 10, "distinct symbols"),
        ("length", [5, 10], "[min, max] length of the sequence to copy (the paper's: [9, 19])"),
        ("size", 20000, "examples, split 80/10/10 into train/val/test"),
    ],
    "parity": [
        ("length", [2, 50], "[min, max] bitstring length"),
        ("size", 20000, "examples, split 80/10/10 into train/val/test"),
    ],
    "language_modeling": [
        ("source", "tinyshakespeare.txt", "a text file under the data folder | hf:<name>[:<config>]"),
        ("tokenizer", "char", "char (the training text's characters) | gpt2 (BPE, the paper's)"),
        ("context", 50, "tokens per example (the paper's: 50)"),
    ],
}

#: the train section by the task's input kind (and for language modeling): minutes, not hours, on 2 cores
TRAIN_STARTS: dict[str, dict[str, Any]] = {
    "image": {"optimizer": "adam", "lr": 1.0e-4, "batch_size": 256, "steps": 400, "eval_every": 50},
    "tokens": {"optimizer": "adamw", "lr": 1.0e-3, "batch_size": 256, "steps": 1000, "eval_every": 100},
    "language_modeling": {"optimizer": "adamw", "lr": 1.0e-3, "batch_size": 256, "steps": 500, "eval_every": 100,
                          "eval_batches": 20, "grad_clip": 1.0},
}

_TRAIN_NOTES = {
    "optimizer": "{optimizers}",
    "lr": "learning rate (schedule: cosine | {{kind: step, every: N}} decays it)",
    "batch_size": "examples per step; CKA is a batch statistic (the paper: 256)",
    "steps": "optimizer steps (or epochs: N)",
    "eval_every": "validate every N steps (the best checkpoint is kept)",
    "eval_batches": "validate on N fixed batches (null: the whole split)",
    "grad_clip": "clip the gradient norm (null: off)",
    "seed": "seeds the data order and both networks' init",
    "device": "auto | cpu | cuda | cuda:N | mps",
}

_NOTES = {  # a few words after a registered name in the lists of choices
    "uniform": "(the paper's Algorithm 1)", "depth": "(nearest relative depth)",
    "learned": "(order-preserving, by measured similarity)", "explicit": "(by hand: pairs: [[guide, target, w], ...])",
    "cka": "(the paper)", "guidance": "(1 - CKA per mapped pair: the paper)", "baseline": "(no guide: the control)",
    "distill": "(logit distillation)", "fitnets": "(linear projector, MSE)", "repa": "(MLP projector, cosine)",
}


class Starter(NamedTuple):
    """What ``write_starter`` wrote: the file and the spec it validates as."""

    path: Path
    spec: PairSpec


def write_starter(guide: str, target: str, task: str, output: str | Path | None = None, name: str | None = None,
                  force: bool = False) -> Starter:
    """Check the inputs, write the commented starter spec for ``guide`` → ``target`` on ``task``, and
    return it (read back with the spec loader before it is written). Every problem is a one-line
    :class:`PairgraphError` (the CLI's exit 2)."""
    task_cls = _known("--task", lambda: TASKS.get(task))
    name = name if name is not None else default_name(guide, target)
    check_name(name, "--name")
    path = output_path(output, name)
    add_import_root(path.parent)  # a factory beside the spec is found when the spec is loaded, so here too
    entries = {side: _known(f"--{side}", lambda ref=ref: resolve_model(ref))
               for side, ref in (("guide", guide), ("target", target))}
    for side, ref in (("guide", guide), ("target", target)):
        _check_input(side, ref, entries[side], task, task_cls.input_kind)
    _check_writable(path, force)
    text = starter_text(name, task, guide, target, {side: e.starter_args() for side, e in entries.items()})
    data, root = parse_yaml(text, str(path))
    spec = parse_spec(data, str(path), root_node=root)
    atomic_write(path, text)
    return Starter(path, spec)


def default_name(guide: str, target: str) -> str:
    """``<guide>_to_<target>`` with every run of characters a name may not hold made one '_'."""
    def clean(ref: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", ref).strip("_.-") or "model"

    return f"{clean(guide)}_to_{clean(target)}"


def output_path(output: str | Path | None, name: str) -> Path:
    """The file to write: ``output``, ``output/<name>.yaml`` for a folder, ``<name>.yaml`` by default."""
    path = Path(output).expanduser() if output is not None else Path(f"{name}.yaml")
    if path.is_dir():
        path = path / f"{name}.yaml"
    if path.suffix not in (".yaml", ".yml"):
        raise PairgraphError(f"-o {str(output)!r}: a spec file ends in .yaml or .yml", f"write e.g. -o {name}.yaml")
    folder = path.parent
    if not folder.is_dir():
        raise PairgraphError(f"-o {str(output)!r}: folder {str(folder)!r} does not exist",
                             "create it first or write into an existing folder")
    return path


def _check_writable(path: Path, force: bool) -> None:
    if path.is_dir():
        raise PairgraphError(f"{path} is a folder", "pass a file name ending in .yaml")
    if path.exists() and not force:
        raise PairgraphError(f"{path} exists; pairgraph init does not overwrite it",
                             "pass --force to replace it, or -o another file")


def _known(flag: str, look_up: Any) -> Any:
    """``look_up()``, its one-line error prefixed with the option that named the thing."""
    try:
        return look_up()
    except PairgraphError as e:
        raise PairgraphError(f"{flag}: {e.message}", e.hint) from None


def _check_input(side: str, ref: str, entry: Any, task: str, task_input: str) -> None:
    """A zoo model (whose input kind is known) must read what the task feeds."""
    if ":" in ref or entry.input == task_input:
        return
    fitting = [n for n, e in MODELS.items() if e.input == task_input]
    said = {"image": "images"}
    raise PairgraphError(f"--{side} {ref} reads {said.get(entry.input, entry.input)} but task {task} feeds "
                         f"{said.get(task_input, task_input)}",
                         f"pick a {task_input} model: " + ", ".join(fitting))


# ---------------------------------------------------------------- the template


def starter_text(name: str, task: str, guide: str, target: str, args: dict[str, dict[str, Any]]) -> str:
    """The commented YAML of a starter spec (``args``: each side's model arguments)."""
    task_cls = TASKS.get(task)
    sequence = task_cls.input_kind != "image"
    parts = [
        _header(name, task, guide, target),
        f"name: {name}",
        _task_section(task, task_cls),
        _network_section("guide", guide, args["guide"]),
        _network_section("target", target, args["target"]),
        _comment(f"mapping: which guide layer supervises which target layer: {_choices(MAPPERS.names(), 'uniform')}.")
        + "\nmapping:\n" + _line("  kind", "uniform"),
        _similarity_section(sequence),
        _guidance_section(),
        _train_section(TRAIN_STARTS.get(task, TRAIN_STARTS["image" if not sequence else "tokens"])),
    ]
    return "\n\n".join(parts) + "\n"


def _header(name: str, task: str, guide: str, target: str) -> str:
    return _comment(
        f"{name}: an untrained {guide} guides {target} on {task} — a starting spec written by `pairgraph init`, "
        "sized for a CPU (minutes on 2 cores). A field left out takes its default; `pairgraph schema` lists "
        "them all. Next: `pairgraph validate FILE` (no data), `pairgraph compile FILE` (the layer mapping), "
        "`pairgraph train FILE`; try a change without editing with --set section.field=value.")


def _task_section(kind: str, task_cls: Any) -> str:
    options = [f for f in task_cls.Options.model_fields if f != "kind"]
    head = _comment(
        f"task: the data, loss and metrics both networks share. Kinds: {_choices(TASKS.names())}. "
        f"Options of {kind}: {', '.join(options)}.")
    lines = [_line(f"  {key}", value, note) for key, value, note in TASK_STARTS.get(kind, [])]
    return "\n".join([head, "task:", f"  kind: {kind}", *lines])


def _network_section(side: str, ref: str, args: dict[str, Any]) -> str:
    if side == "guide":
        head = _comment(
            "guide: the frozen network whose layers the target is aligned with. model: a zoo name "
            "(`pairgraph zoo`), torchvision:<name>, timm:<name>, hf:<model_type> or package.module:factory. "
            "weights: untrained (a seeded init; as the paper notes, an untrained guide transfers only its "
            "architectural prior, no knowledge of the data) | train (train the guide on the task first; cached) | "
            "pretrained (the source's own weights: timm:, torchvision:, hf: with args.hf_name) | a checkpoint path.")
    else:
        head = _comment("target: the network that trains, on the task's loss plus the alignment with the guide.")
    presets = get_args(LayerSelection.model_fields["preset"].annotation)
    if "preset" in args:
        note = "the zoo's cpu preset (paper: the paper's size); factory arguments beside it override it"
    elif args:
        note = "a small model; any factory or config argument; the task fills its sizes"
    else:
        note = "the factory's keyword arguments; the task fills the sizes it takes (num_classes, ...)"
    lines = [head, f"{side}:", _line("  model", ref), _line("  args", args, note)]
    if side == "guide":
        lines.append(_line("  weights", "untrained", "untrained | train | pretrained | path/to/checkpoint"))
    lines += [
        "  layers:".ljust(24) + "# which modules become tap points",
        _line("    preset", "default", f"{' | '.join(presets)} (the authors' selection exactly)"),
        _line("    include", ["*"], "globs of module names to tap, e.g. ['blocks.*']"),
        _line("    exclude", [], "globs to leave out"),
    ]
    return "\n".join(lines)


def _similarity_section(sequence: bool) -> str:
    lines = [_comment(f"similarity: how alike two layers are: {_choices(MEASURES.names(), 'cka')}."), "similarity:",
             _line("  measure", "cka")]
    if sequence:
        lines.append(_line("  sequence", "flatten", "(batch, T, d) taps: flatten per sample (the paper) | token | position"))
    return "\n".join(lines)


def _guidance_section() -> str:
    return "\n".join([
        _comment(f"guidance: the loss the guide adds. mode: {_choices(OBJECTIVES.names(), 'guidance')} | "
                 "package.module:ClassName (your Objective subclass); until_step: N guides the first N steps only."),
        "guidance:", _line("  mode", "guidance"),
        _line("  weight", 1.0, "weight of the alignment loss against the task's"),
        _line("  reduce", "sum", "sum over mapped pairs (the paper) | mean"),
    ])


def _train_section(values: dict[str, Any]) -> str:
    values = {**values, "seed": 0, "device": "auto"}
    notes = {k: v.format(optimizers=" | ".join(OPTIMIZERS.names())) for k, v in _TRAIN_NOTES.items()}
    lines = [_line(f"  {key}", value, notes[key]) for key, value in values.items()]
    return "\n".join([_comment("train: how the target trains (and the guide, with guide.weights: train)."),
                      "train:", *lines])


def _choices(names: Any, first: str | None = None) -> str:
    """``a (note) | b | …``, the default ``first``."""
    ordered = sorted(names, key=lambda n: n != first)
    return " | ".join(f"{n} {_NOTES[n]}" if n in _NOTES else n for n in ordered)


def _line(key: str, value: Any, note: str = "", column: int = 24) -> str:
    """``key: value`` with ``# note`` at ``column`` (or two spaces after a longer line)."""
    text = f"{key}: {_flow(value)}"
    return f"{text.ljust(max(column, len(text) + 2))}# {note}" if note else text


def _comment(text: str, width: int = 110) -> str:
    return "\n".join("# " + line for line in textwrap.wrap(text, width - 2))


def _flow(value: Any) -> str:
    """``value`` as one line of YAML (a flow mapping or list, a quoted string where YAML needs it)."""
    short = re.sub(r"e([-+])0*(\d)", r"e\1\2", f"{value:.1e}") if isinstance(value, float) else ""
    if short and 0 < abs(value) < 1e-2 and float(short) == value:  # 1.0e-4 as specs write it (YAML 1.1: a float)
        return short
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("...").strip()
