"""The layout's rules, read from the source (docs/architecture.md draws the same table): the pure maths imports
nothing of the project, only launch/ imports submitit, a local job never loads it, and no module imports from a
higher floor. Imports inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lnr_dist"

# floor of each top-level unit of lnr_dist (a package or a module); a unit imports only from lower floors
# (and from itself). Units on one floor are siblings and do not import each other.
FLOORS = {
    "lnr": 0,  # pure maths
    "neighbours": 0,  # pure maths: exact nearest-neighbour search, kNN / ANN / WANN votes
    "core": 1,  # config, storage, logs, errors, dist, plots, synthetic
    "data": 2,
    "models": 2,
    "experiment": 3,  # ExperimentConfig: the sections of data/ and models/ plus the jobs'
    "runtime": 4,  # Ray cluster and worker groups, shared rows, deliberate faults
    "stage2": 5,  # the stage-2 method registry, label policies and flip tables; read by the trainer's recipes
    "train": 6,
    "infer": 6,
    "features": 7,  # the cached-features backend: features once per checkpoint, heads on them
    "tune": 8,
    "rounds": 8,  # iterated LNR: inference (or a head) + flips + stage 2 per round, on either backend
    "jobs": 9,  # the job registry
    "launch": 10,  # submitit + SLURM
    "reproduce": 11,
    "demo": 12,  # `make demo` = reproduce on the mini set
    "cli": 13,
    "api": 13,  # the Python API: what the commands do, as functions
    "__init__": 14,  # re-exports the API's names, loading it on first use
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, relative ones resolved; `from pkg import a, b`
    yields pkg.a and pkg.b when pkg is the project's root package (they are modules there)."""
    tree = ast.parse(path.read_text() if source is None else source)
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            if module == "lnr_dist":
                found += [(node.lineno, f"lnr_dist.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


def _unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "lnr_dist":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def floor_violations(path: Path, source: str | None = None) -> list[str]:
    own = _unit(_module_name(path))
    problems = []
    for line, module in imported_modules(path, source):
        other = _unit(module)
        if other is None or other == own:
            continue
        if FLOORS[other] >= FLOORS[own]:
            problems.append(f"{path.relative_to(REPO)}:{line} ({own}, floor {FLOORS[own]}) imports {module} "
                            f"({other}, floor {FLOORS[other]})")  # fmt: skip
    return problems


def _library_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_floor():
    units = {_unit(_module_name(path)) for path in _library_files()}
    assert units - FLOORS.keys() == set(), "a new package or module needs its floor in FLOORS (and the docs)"
    assert FLOORS.keys() - units == set(), "FLOORS names a unit that no longer exists"


def test_the_pure_maths_imports_nothing_of_the_project():
    problems = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in sorted((PACKAGE / "lnr").rglob("*.py"))
        for line, module in imported_modules(path)
        if module.startswith("lnr_dist") and not module.startswith("lnr_dist.lnr")
    ]
    assert problems == []


def test_only_launch_imports_submitit():
    problems = [
        f"{path.relative_to(REPO)}:{line}"
        for path in _library_files()
        if _unit(_module_name(path)) != "launch"
        for line, module in imported_modules(path)
        if module.split(".")[0] == "submitit"
    ]
    assert problems == []


def test_no_module_imports_from_a_higher_floor():
    assert [problem for path in _library_files() for problem in floor_violations(path)] == []


@pytest.mark.parametrize(
    ("where", "source", "bad"),
    [
        ("lnr_dist/lnr/flips.py", "from ..core import storage\n", True),
        ("lnr_dist/train/engine.py", "def f():\n    from ..tune.sweep import run_sweep\n", True),
        ("lnr_dist/train/engine.py", "from ..infer import inference\n", True),  # siblings on one floor
        ("lnr_dist/data/cifar.py", "from .. import experiment\n", True),
        (
            "lnr_dist/train/engine.py",
            "from ..stage2.registry import stage2_flips\nfrom . import metrics\n",
            False,
        ),
    ],
)
def test_the_floor_check_finds_an_upward_import(where, source, bad):
    assert bool(floor_violations(REPO / where, source)) is bad


def test_a_local_job_does_not_import_submitit(tmp_path):
    """The CLI's own path for `lnr-dist stage1` up to the job function (replaced by a stub so no training runs),
    then the modules every real job imports: submitit is never loaded."""
    script = f"""
import dataclasses, sys
import lnr_dist.jobs
from lnr_dist.cli import main

reached = []
stub = lambda cfg, out: reached.append(cfg.run_dir)  # returns None, as a task that only lends its node
lnr_dist.jobs.JOBS["stage1"] = dataclasses.replace(lnr_dist.jobs.JOBS["stage1"], run=stub)
assert main(["stage1", "--config", "configs/mini.yaml", "run_dir={tmp_path}"]) == 0
assert reached == ["{tmp_path}"], reached
import lnr_dist.features.cache, lnr_dist.infer.inference, lnr_dist.train.trainer, lnr_dist.tune.sweep
print(sorted(name for name in sys.modules if name.split(".")[0] == "submitit"))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_ray_train_workers_modules_leave_plotting_and_torchvision_out():
    """Every Ray Train worker imports its function's module before its first batch (the step's start-up, issue 18):
    matplotlib (0.3 s) is imported where rank 0 draws, torchvision (2 s: torch._dynamo) where a ResNet is built
    or the PyTorch loader's transforms are (DALI's jobs, as bench_scale's, need neither)."""
    script = """
import sys
import lnr_dist.features.cache, lnr_dist.infer.inference, lnr_dist.train.trainer
print(sorted({name.split(".")[0] for name in sys.modules} & {"matplotlib", "torchvision"}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
