"""Static checks of the conda environments in envs/ (conda itself cannot run here).

- every env file is valid YAML, uses conda-forge only, and pins every dependency;
- every rule that runs something names an env file that exists;
- each env lists every third-party package that the code its rules run imports: rule ->
  `lungfusion <stage>` in its shell command -> `lungfusion.commands.<stage>` and everything in
  the package it imports (walked with `ast`, lazy imports included, optional ones skipped) ->
  third-party top-level modules -> distributions -> conda-forge names.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
ENVS = REPO / "envs"
PACKAGE = "lungfusion"
EXPECTED_ENVS = ("cohort", "imaging", "train", "evaluate")

# Distribution (normalised) -> conda-forge package, where the names differ.
CONDA_NAMES = {"torch": "pytorch"}
# Import name -> distribution, for modules not installed here (packages_distributions misses them).
KNOWN_DISTRIBUTIONS = {
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "sksurv": "scikit-survival",
    "SimpleITK": "simpleitk",
    "PIL": "pillow",
    "skimage": "scikit-image",
    "torch": "torch",
}
# Imports of optional backends a stage only reaches when configured for them, and which the
# env leaves to the user: segment.backend lungmask / totalsegmentator (torch comes with them).
OPTIONAL_IMPORTS = {"segment": {"lungmask", "totalsegmentator", "torch"}}
# conda-forge packages that provide another's modules (a smaller build of the same project).
PROVIDED_BY = {"matplotlib": {"matplotlib-base"}, "pytorch": {"pytorch-cpu", "pytorch-gpu"}}

PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9_.\-]+)\s*(==|=)\s*[0-9][A-Za-z0-9_.+!*\-]*(=[A-Za-z0-9_.*]+)?$"
)
PIP_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9_.\-]+)(\[[A-Za-z0-9_,\-]+\])?==[0-9][A-Za-z0-9_.+!\-]*$"
)


# ---------------------------------------------------------------------------------------------
# Env files
# ---------------------------------------------------------------------------------------------


def normalise(name: str) -> str:
    """PEP 503 name: conda-forge names follow it for the packages used here."""
    return re.sub(r"[-_.]+", "-", name).lower()


def env_packages(env_file: Path) -> set[str]:
    """Normalised names of every conda and pip dependency of an env file."""
    env = yaml.safe_load(env_file.read_text())
    names = set()
    for dep in env.get("dependencies", []):
        if isinstance(dep, str):
            names.add(normalise(re.split(r"[=<>!\s]", dep, maxsplit=1)[0]))
        elif isinstance(dep, dict):
            names.update(
                normalise(re.split(r"[=<>!\[\s]", p, maxsplit=1)[0]) for p in dep.get("pip", [])
            )
    return names


def env_files() -> list[Path]:
    return sorted(ENVS.glob("*.yaml"))


def test_expected_env_files_exist():
    present = {path.stem for path in env_files()}
    missing = set(EXPECTED_ENVS) - present
    assert not missing, f"missing env files in {ENVS}: {sorted(missing)}"


@pytest.mark.parametrize("env_file", env_files(), ids=lambda p: p.name)
def test_env_file_is_valid_and_pinned(env_file: Path):
    env = yaml.safe_load(env_file.read_text())
    assert isinstance(env, dict), f"{env_file.name}: not a YAML mapping"
    assert env.get("channels") == ["conda-forge", "nodefaults"], (
        f"{env_file.name}: channels must be [conda-forge, nodefaults], got {env.get('channels')}"
    )
    deps = env.get("dependencies")
    assert isinstance(deps, list) and deps, f"{env_file.name}: no dependencies"

    unpinned = []
    pip_sections = [d for d in deps if isinstance(d, dict)]
    for dep in deps:
        if isinstance(dep, str) and not PIN.match(dep):
            unpinned.append(dep)
    for section in pip_sections:
        assert set(section) == {"pip"}, f"{env_file.name}: unknown section {sorted(section)}"
        unpinned += [p for p in section["pip"] if not PIP_PIN.match(p)]
    assert not unpinned, f"{env_file.name}: dependencies not pinned with == or =: {unpinned}"

    names = [normalise(PIN.match(d)["name"]) for d in deps if isinstance(d, str)]
    assert "python" in names, f"{env_file.name}: python is not pinned"
    assert len(names) == len(set(names)), f"{env_file.name}: a package is listed twice"
    if pip_sections:
        assert "pip" in names, f"{env_file.name}: has a pip: section but does not list pip"


# ---------------------------------------------------------------------------------------------
# Import walk
# ---------------------------------------------------------------------------------------------


def module_file(name: str, src: Path = SRC) -> Path | None:
    """The source file of a module of the package, or None if there is none."""
    base = src.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        caught = handler.type
        names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
        if any(
            isinstance(n, ast.Name) and n.id in {"ImportError", "ModuleNotFoundError"}
            for n in names
        ):
            return True
    return False


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportCollector(ast.NodeVisitor):
    """Absolute names imported anywhere in a module (function bodies included), except in
    `try: ... except ImportError` blocks (optional extras) and `if TYPE_CHECKING:` blocks."""

    def __init__(self, module: str, is_package: bool):
        self.package = module if is_package else module.rpartition(".")[0]
        self.names: set[str] = set()

    def visit_Try(self, node: ast.Try) -> None:
        if not _catches_import_error(node):
            for child in node.body:
                self.visit(child)
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(child)

    visit_TryStar = visit_Try

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1])
            source = f"{base}.{node.module}" if node.module else base
        else:
            source = node.module
        self.names.add(source)
        # `from pkg import sub` may import a submodule; the walk keeps those that exist.
        self.names.update(f"{source}.{alias.name}" for alias in node.names if alias.name != "*")


def imported_names(path: Path, module: str) -> set[str]:
    collector = _ImportCollector(module, is_package=path.name == "__init__.py")
    collector.visit(ast.parse(path.read_text(), filename=str(path)))
    return collector.names


def third_party_imports(roots: list[str], *, src: Path = SRC, package: str = PACKAGE) -> set[str]:
    """Top-level third-party modules imported by `roots` and every package module they import."""
    seen: set[str] = set()
    todo = list(roots)
    external: set[str] = set()
    while todo:
        name = todo.pop()
        top = name.split(".")[0]
        if top != package:
            if top not in sys.stdlib_module_names and top != "__future__":
                external.add(top)
            continue
        # Importing a.b.c imports a and a.b first.
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            path = module_file(module, src)
            if module in seen or path is None:
                continue
            seen.add(module)
            todo.extend(imported_names(path, module))
    return external


def conda_name(top_level: str, distributions: dict[str, list[str]]) -> str:
    dists = distributions.get(top_level) or [KNOWN_DISTRIBUTIONS.get(top_level, top_level)]
    dist = normalise(dists[0])
    return CONDA_NAMES.get(dist, dist)


def satisfied(package: str, listed: set[str]) -> bool:
    return package in listed or bool(PROVIDED_BY.get(package, set()) & listed)


def test_import_walk_follows_the_package(tmp_path: Path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import json\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text(
        "from . import b\n"
        "import numpy as np\n"
        "def lazy():\n    import torch.nn\n"
        "try:\n    import lungmask\nexcept ImportError:\n    lungmask = None\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import pandas\n"
    )
    (pkg / "sub" / "b.py").write_text(
        "from ..c import thing\nfrom sklearn.metrics import roc_auc_score\n"
    )
    (pkg / "c.py").write_text("import yaml\nthing = 1\n")
    (pkg / "unused.py").write_text("import scipy\n")

    found = third_party_imports(["pkg.sub.a"], src=tmp_path, package="pkg")

    assert found == {"numpy", "torch", "sklearn", "yaml"}


def test_conda_names_map_import_names():
    dists = packages_distributions()
    assert conda_name("torch", dists) == "pytorch"
    assert conda_name("sklearn", dists) == "scikit-learn"
    assert conda_name("yaml", dists) == "pyyaml"
    assert conda_name("SimpleITK", dists) == "simpleitk"
    assert conda_name("sksurv", dists) == "scikit-survival"
    assert satisfied("matplotlib", {"matplotlib-base"})


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow_rules(tmp_path_factory) -> list[dict]:
    """name, conda env file (resolved), shell command and kind of every rule in the workflow,
    read with Snakemake's API (parsing only: nothing runs, no conda needed)."""
    snakefile = REPO / "Snakefile"
    if not snakefile.is_file():
        pytest.skip(f"no Snakefile at {snakefile} yet")
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
    )

    workdir = tmp_path_factory.mktemp("workflow")
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        api_workflow = api.workflow(
            snakefile=snakefile,
            workdir=workdir,
            config_settings=ConfigSettings(configfiles=[REPO / "config.yaml"]),
            resource_settings=ResourceSettings(),
            storage_settings=StorageSettings(),
        )
        rules = []
        for rule in api_workflow._workflow.rules:
            env = rule.conda_env
            if env is not None:
                env = (Path(rule.snakefile).parent / str(env)).resolve()
            # `norun`: a target-only rule such as `all` (no shell, script or run block).
            rules.append(
                {
                    "name": rule.name,
                    "conda": env,
                    "shell": rule.shellcmd,
                    "runs_code": not rule.norun,
                }
            )
    return rules


def stage_of(shell: str) -> str | None:
    """The lungfusion subcommand a rule's shell command runs (`{LUNGFUSION} ... <stage> ...`)."""
    from lungfusion.cli import COMMANDS

    if "LUNGFUSION" not in shell and "lungfusion" not in shell:
        return None
    tokens = re.findall(
        r"[A-Za-z_][A-Za-z0-9_]*", shell.split("lungfusion", 1)[-1].split("LUNGFUSION", 1)[-1]
    )
    return next((t for t in tokens if t in COMMANDS), None)


def test_workflow_has_rules(workflow_rules):
    assert any(r["runs_code"] for r in workflow_rules), (
        "the workflow defines no rule that runs code"
    )


def test_every_rule_names_an_existing_env(workflow_rules):
    problems = []
    for rule in workflow_rules:
        if not rule["runs_code"]:
            continue  # a target-only rule such as `all`
        if rule["conda"] is None:
            problems.append(f"rule {rule['name']}: no `conda:` directive")
        elif not rule["conda"].is_file():
            problems.append(f"rule {rule['name']}: conda env {rule['conda']} does not exist")
        elif rule["conda"].parent != ENVS.resolve():
            problems.append(f"rule {rule['name']}: conda env {rule['conda']} is not in envs/")
    assert not problems, "\n".join(problems)


def test_every_rule_runs_a_lungfusion_stage(workflow_rules):
    problems = []
    for rule in workflow_rules:
        if not rule["runs_code"]:
            continue
        if not rule["shell"]:
            problems.append(f"rule {rule['name']}: not a shell rule; cannot tell what it imports")
            continue
        stage = stage_of(rule["shell"])
        if stage is None:
            problems.append(f"rule {rule['name']}: its shell runs no `lungfusion <stage>`")
        else:
            from lungfusion.cli import COMMANDS

            module = f"{PACKAGE}.commands.{COMMANDS[stage][0]}"
            if module_file(module) is None:
                problems.append(
                    f"rule {rule['name']}: runs stage {stage!r} but {module} is missing"
                )
    assert not problems, "\n".join(problems)


def test_envs_list_every_imported_package(workflow_rules):
    from lungfusion.cli import COMMANDS

    distributions = packages_distributions()
    problems = []
    for rule in workflow_rules:
        if not (rule["shell"] and rule["conda"] and rule["conda"].is_file()):
            continue  # reported by the two tests above
        stage = stage_of(rule["shell"])
        module = f"{PACKAGE}.commands.{COMMANDS[stage][0]}" if stage else None
        if module is None or module_file(module) is None:
            continue
        # `python -m lungfusion <stage>` runs __main__ -> cli -> config, then the stage module.
        imports = third_party_imports([f"{PACKAGE}.__main__", module])
        imports -= OPTIONAL_IMPORTS.get(stage, set())
        needed = {conda_name(top, distributions) for top in imports}
        listed = env_packages(rule["conda"])
        missing = sorted(p for p in needed if not satisfied(p, listed))
        if missing:
            problems.append(
                f"rule {rule['name']} ({module}) imports packages missing from "
                f"envs/{rule['conda'].name}: {missing}"
            )
    assert not problems, "\n".join(problems)
