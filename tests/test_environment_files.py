"""Consistency checks for requirements.txt, environment.yml, the Makefile and the CI script."""

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements.txt"
ENVIRONMENT = ROOT / "environment.yml"
MAKEFILE = ROOT / "Makefile"
CI_SCRIPT = ROOT / ".ci" / "run"


def read_requirements(path: Path) -> dict[str, Requirement]:
    """Parse a requirements file into requirements keyed by lower-case project name."""
    requirements = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        requirements[requirement.name.lower()] = requirement
    return requirements


def conda_environment() -> dict:
    return yaml.safe_load(ENVIRONMENT.read_text())


def pip_section(environment: dict) -> list[str]:
    for dependency in environment["dependencies"]:
        if isinstance(dependency, dict) and "pip" in dependency:
            return dependency["pip"]
    return []


def make_rule(target: str) -> tuple[list[str], list[str]]:
    """Return the prerequisites and the tab-indented recipe lines of ``target`` in the Makefile."""
    lines = MAKEFILE.read_text().splitlines()
    header = re.compile(rf"^{re.escape(target)}\s*:(?!=)(.*)$")
    for index, line in enumerate(lines):
        match = header.match(line)
        if match:
            recipe = []
            for following in lines[index + 1 :]:
                if not following.startswith("\t"):
                    break
                recipe.append(following.strip())
            return match.group(1).split(), recipe
    raise AssertionError(f"Makefile has no '{target}:' rule")


def test_requirements_parse_and_name_core_packages():
    requirements = read_requirements(REQUIREMENTS)
    expected = {"torch", "torchvision", "numpy", "matplotlib", "ipywidgets", "tqdm", "ipykernel",
                "jupyterlab", "nbclient", "nbformat", "nbval", "pytest", "ruff"}
    missing = expected - requirements.keys()
    assert not missing, f"requirements.txt is missing {sorted(missing)}"


@pytest.mark.parametrize("version", ["7.7.1", "7.8.5", "8.0.0", "8.1.7"])
def test_ipywidgets_allows_colab_and_current(version):
    specifier = read_requirements(REQUIREMENTS)["ipywidgets"].specifier
    assert specifier.contains(version), f"ipywidgets{specifier} rejects {version}"


@pytest.mark.parametrize("version", ["7.6.5", "9.0.0"])
def test_ipywidgets_rejects_untested_versions(version):
    specifier = read_requirements(REQUIREMENTS)["ipywidgets"].specifier
    assert not specifier.contains(version), f"ipywidgets{specifier} admits {version}"


@pytest.mark.parametrize(("name", "version"), [("torch", "2.11.0"), ("torchvision", "0.26.0")])
def test_torch_range_admits_colab(name, version):
    # Colab's Python 3.13 runtime ships torch 2.11, and torchvision 0.26 is the release built for it.
    specifier = read_requirements(REQUIREMENTS)[name].specifier
    assert specifier.contains(version), f"{name}{specifier} rejects Colab's {version}"


def test_environment_uses_conda_forge():
    channels = conda_environment()["channels"]
    assert "conda-forge" in channels
    assert "defaults" not in channels


def test_environment_pins_python_minor():
    dependencies = [item for item in conda_environment()["dependencies"] if isinstance(item, str)]
    pythons = [item for item in dependencies if re.split(r"[=<>!~ ]", item, maxsplit=1)[0] == "python"]
    assert len(pythons) == 1, f"environment.yml should list python once, found {pythons}"
    assert re.fullmatch(r"python=3\.1[0-3]", pythons[0]), f"expected python=3.10 to 3.13, found {pythons[0]}"
    assert "pip" in dependencies


def test_environment_pip_matches_requirements():
    pip_entries = pip_section(conda_environment())
    assert pip_entries, "environment.yml has no pip section"
    if "-r requirements.txt" in pip_entries:
        assert len(pip_entries) == 1, f"pip section should only include requirements.txt, found {pip_entries}"
        return
    listed = {Requirement(entry).name.lower(): str(Requirement(entry).specifier) for entry in pip_entries}
    required = {name: str(req.specifier) for name, req in read_requirements(REQUIREMENTS).items()}
    assert listed == required


def test_makefile_test_target_runs_checks():
    prerequisites, recipe_lines = make_rule("test")
    recipe = " ".join(recipe_lines)
    assert "lint" in prerequisites
    assert "NIN_QUICK=1" in recipe
    assert "pytest" in recipe
    assert "--nbval" in recipe
    assert "--nbval-current-env" in recipe
    assert "notebooks" in recipe
    assert "tests" in recipe


def test_makefile_lint_runs_ruff():
    prerequisites, recipe_lines = make_rule("lint")
    assert "$(STAMP)" in prerequisites
    assert "$(BIN)/ruff check ." in recipe_lines


def test_makefile_installs_from_requirements():
    makefile = MAKEFILE.read_text()
    prerequisites, recipe_lines = make_rule("$(STAMP)")
    assert "VENV := .venv" in makefile
    assert "STAMP := $(VENV)/.installed" in makefile
    assert prerequisites == ["requirements.txt"]
    assert any("-r requirements.txt" in line for line in recipe_lines)
    assert "@touch $@" in recipe_lines


def test_ci_script_calls_make_test():
    assert CI_SCRIPT.is_file()
    lines = [line.strip() for line in CI_SCRIPT.read_text().splitlines()]
    assert "set -euo pipefail" in lines
    assert "make test" in lines
    assert any("NIN_DATA_DIR" in line for line in lines)
