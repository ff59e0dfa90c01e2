"""Revert each fix of issue 32 once, in a scratch copy of HEAD, and check that its test then fails.

Usage: .venv/bin/python scripts/revert_check.py [NAME ...]   (default: every fix; about 10 minutes on 2 cores)
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
#: (name, file, [(fixed text, reverted text)], test file, -k expression)
FIXES = [
 ("yaml node budget", "pairgraph/config/yaml_io.py", [("        _check_size(root, source)\n", ""), ("    if node is None or id(node) in seen_nodes:", "    if node is None:")], "tests/test_hostile_input.py", "bomb_is_refused"),
 ("name rule", "pairgraph/paths.py", [('NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$"', 'NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"')], "tests/test_hostile_input.py", "leave"),
 ("compile -o .", "pairgraph/compiler/pipeline.py", [('        refuse_replacing(out / name, text, [source], "-o")', '        pass')], "tests/test_hostile_input.py", "does_not_replace"),
 ("EOF one line", "cli/main.py", [("report_eof(app)\n", "")], "tests/test_hostile_input.py", "eof_error"),
 ("internal error one line", "cli/main.py", [("        internal_error(e, err_console)", "        raise")], "tests/test_hostile_input.py", "unexpected_exception"),
 ("shared modules", "pairgraph/core/sharing.py", [('    if guide is target:\n', '    return\n    if guide is target:\n')], "tests/test_hostile_input.py", "guidance_loss_refuses or factories"),
 ("seed range", "pairgraph/config/spec.py", [('    seed: int = Field(default=0, ge=0, lt=2**31, description="Seed of the run (0 ≤ seed < 2**31).")', '    seed: int = 0')], "tests/test_hostile_input.py", "seed"),
 ("plot hand-edited", "pairgraph/analysis/runs.py", [('    if not isinstance(rec, dict) or not _number(rec.get("step"))', '    return rec if isinstance(rec, dict) and "step" in rec else None\n    if not isinstance(rec, dict) or not _number(rec.get("step"))')], "tests/test_hostile_input.py", "hand_edited"),
 ("figure type", "pairgraph/analysis/figures.py", [('    if path.suffix.lower() not in FIGURE_FORMATS:', '    if False:')], "tests/test_hostile_input.py", "bad_output and file"),
 ("schema -o", "cli/main.py", [('        atomic_write(output, text + "\\n")', '        output.write_text(text + "\\n")')], "tests/test_hostile_input.py", "bad_output and cannot"),
 ("nproc", "cli/main.py", [('    if nproc < 1:\n', '    if False:\n')], "tests/test_hostile_input.py", "bad_output and nproc"),
 ("one class", "pairgraph/tasks/images.py", [('            if info[0] < 2:', '            if False:')], "tests/test_hostile_input.py", "one_class"),
 ("truncated archive", "pairgraph/tasks/image_sources.py", [('    except (EOFError, tarfile.TarError, lzma.LZMAError, zlib.error, OSError) as e:', '    except KeyError as e:')], "tests/test_hostile_input.py", "truncated_cifar"),
 ("demo baseline", "pairgraph/demo.py", [('    if load_spec(path, overrides).guidance.mode == "baseline":', '    if False:')], "tests/test_hostile_input.py", "demo"),
 ("timm overlay", "zoo/sources.py", [('        if file is not None and not Path(str(file)).expanduser().is_file():', '        if False:'), ('            if file is None or "weights_only" not in str(e):', '            if True:')], "tests/test_hostile_input.py", "timm"),
 ("API argument types", "pairgraph/errors.py", [('    if not isinstance(value, types):', '    if False:')], "tests/test_hostile_input.py", "wrong_argument"),
 ("default ids", "pairgraph/training/runs.py", [('            run_dir.mkdir()\n        except FileExistsError:', '            run_dir.mkdir(exist_ok=True)\n            return run_dir, None, True\n        except FileExistsError:')], "tests/test_run_ownership.py", "one_default_id"),
 ("live lock", "pairgraph/training/runs.py", [('        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)', '        pass')], "tests/test_run_ownership.py", "second_writer or killed"),
 ("run id door", "pairgraph/training/runs.py", [('        check_name(run_id, "--run-id")\n', '        pass\n'), ('        run_dir = inside(root, run_id)', '        run_dir = root / run_id')], "tests/test_run_ownership.py", "leaves_the_runs_folder"),
 ("restart clean", "pairgraph/training/runs.py", [('    found = [run_dir / n for n in RUN_FILES if (run_dir / n).exists()]', '    found = []')], "tests/test_run_ownership.py", "without_a_checkpoint"),
 ("resume shorten", "pairgraph/training/runs.py", [('    if total < step:', '    if False:')], "tests/test_run_ownership.py", "shorten"),
 ("digest", "pairgraph/training/runs.py", [('    if head.startswith(DIGEST_PREFIX) and', '    if False and')], "tests/test_run_ownership.py", "hand_edited"),
 ("tmp cleanup", "pairgraph/training/runs.py", [('            tmp.unlink(missing_ok=True)', '            pass')], "tests/test_run_ownership.py", "temporary_files"),
 ("stub folder", "pairgraph/training/runs.py", [('    if not (metrics.exists() and metrics.stat().st_size):\n        shutil.rmtree', '    if False:\n        shutil.rmtree')], "tests/test_run_ownership.py", "leaves_no_folder"),
 ("sigterm", "pairgraph/training/runs.py", [('    if threading.current_thread() is not threading.main_thread():', '    if True:')], "tests/test_run_ownership.py", "sigterm"),
]


def main() -> None:
    only = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "head")
        os.mkdir(base)
        subprocess.run(f"git -C {ROOT} archive HEAD | tar -x -C {base}", shell=True, check=True)
        for package in ("cli", "zoo", "specs"):  # pyproject's package-dir: pairgraph.cli is ./cli, …
            os.symlink(f"../{package}", os.path.join(base, "pairgraph", package))
        for name, f, subs, test, k in FIXES:
            if not only or name in only:
                print(f"{name:20s} {check_one(base, os.path.join(tmp, 'tree'), f, subs, test, k)}", flush=True)


def check_one(base: str, tree: str, f: str, subs: list, test: str, k: str) -> str:
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(base, tree, symlinks=True)
    path = os.path.join(tree, f)
    text = Path(path).read_text()
    for a, b in subs:
        assert text.count(a) == 1, (f, a)
        text = text.replace(a, b)
    Path(path).write_text(text)
    r = subprocess.run(["timeout", "120", PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", test, "-k", k],
                       cwd=tree, env={**os.environ, "PYTHONPATH": tree}, capture_output=True, text=True, check=False)
    last = (r.stdout.strip().splitlines() or ["?"])[-1] if r.returncode != 124 else "timed out (120 s)"
    return f"{'fails without the fix' if r.returncode not in (0, 5) else 'PASSES WITHOUT THE FIX'}: {last}"


if __name__ == "__main__":
    main()
