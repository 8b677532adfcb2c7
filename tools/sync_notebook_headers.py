"""Insert or update the Colab badge cell and the setup cell of every notebook, and README's notebook table.

The GitHub repository and branch are set once, in the ``[tool.nin-notebooks]`` table of
pyproject.toml. This tool copies them into:

- a markdown cell at the top of each notebook with an "Open in Colab" badge;
- the notebook's first code cell (the setup cell). On Colab it downloads ``nin_helpers.py``
  from the repository, because Colab opens a notebook without the rest of the repository.
  Elsewhere it imports ``nin_helpers.py`` from the folder above ``notebooks/``;
- the "Notebooks" table of README.md, if README.md exists. The table sits between the two
  marker comments below and is appended with a "## Notebooks" heading when they are missing.

Usage, from any folder:

    python tools/sync_notebook_headers.py                 # every notebooks/*.ipynb, and README.md
    python tools/sync_notebook_headers.py notebooks/05_training.ipynb   # one notebook, and README.md
    python tools/sync_notebook_headers.py --check         # change nothing; exit 1 if a file is out of date

A notebook whose setup cell changed must be executed again, so that its outputs and execution counts are real.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
README = ROOT / "README.md"
NOTEBOOKS_DIR = ROOT / "notebooks"
SETTINGS_TABLE = "nin-notebooks"

BADGE_CELL_ID = "colab-badge"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_ALT_TEXT = "Open In Colab"
TABLE_START = "<!-- notebooks-table:start (written by tools/sync_notebook_headers.py) -->"
TABLE_END = "<!-- notebooks-table:end -->"
README_INTRODUCTION = (
    "Each badge opens a notebook in Google Colab. There the setup cell downloads `nin_helpers.py` from\n"
    "this repository and installs nothing, because Colab already has PyTorch, torchvision, matplotlib\n"
    "and ipywidgets."
)

# GitHub's rules for owner and repository names, and a branch name without spaces or URL syntax.
REPOSITORY_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?/[A-Za-z0-9._-]+")
BRANCH_PATTERN = re.compile(r"[A-Za-z0-9._/-]+")
# Matches "Notebook 1: ", "3. " and "4 - " at the start of a notebook title.
TITLE_NUMBER_PATTERN = re.compile(r"^(?:Notebook\s+)?\d+\s*[.:-]\s*")

SETUP_TEMPLATE = '''\
import sys
from pathlib import Path

if "google.colab" in sys.modules:
    # Colab opens this notebook without the rest of the repository, so download the helper module.
    # Colab already has torch, torchvision, matplotlib and ipywidgets 7.7.1: install nothing else.
    from urllib.request import urlopen

    url = "{helpers_url}"
    with urlopen(url, timeout=60) as response:
        Path("nin_helpers.py").write_bytes(response.read())
    sys.path.insert(0, str(Path.cwd()))
else:
    # nin_helpers.py lives in the repository root, one folder above notebooks/.
    sys.path.insert(0, str(Path.cwd().parent))
import nin_helpers as nh'''


@dataclass(frozen=True)
class RepositorySettings:
    """The GitHub repository ("OWNER/REPO") and branch that Colab links and downloads point to."""

    repository: str
    branch: str


def load_settings(pyproject: Path = PYPROJECT) -> RepositorySettings:
    """Read ``[tool.nin-notebooks]`` from ``pyproject``. Raise ``ValueError`` if it is missing or invalid."""
    with pyproject.open("rb") as file:
        table = tomllib.load(file).get("tool", {}).get(SETTINGS_TABLE)
    if table is None:
        raise ValueError(f"{pyproject} has no [tool.{SETTINGS_TABLE}] table with 'repository' and 'branch'")
    repository = table.get("repository")
    branch = table.get("branch")
    if not isinstance(repository, str) or not REPOSITORY_PATTERN.fullmatch(repository):
        raise ValueError(f"[tool.{SETTINGS_TABLE}] repository = {repository!r} is invalid: expected 'OWNER/REPO'")
    if not isinstance(branch, str) or not BRANCH_PATTERN.fullmatch(branch):
        raise ValueError(f"[tool.{SETTINGS_TABLE}] branch = {branch!r} is invalid: expected a branch name")
    return RepositorySettings(repository, branch)


def repository_path(notebook: Path) -> str:
    """Return the notebook's path relative to the repository root, with forward slashes."""
    return notebook.resolve().relative_to(ROOT).as_posix()


def colab_url(settings: RepositorySettings, notebook_path: str) -> str:
    """Return the Colab address that opens ``notebook_path`` (relative to the repository root)."""
    return f"https://colab.research.google.com/github/{settings.repository}/blob/{settings.branch}/{notebook_path}"


def badge_markdown(settings: RepositorySettings, notebook_path: str) -> str:
    return f"[![{BADGE_ALT_TEXT}]({BADGE_IMAGE})]({colab_url(settings, notebook_path)})"


def helpers_url(settings: RepositorySettings) -> str:
    """Return the address of the raw ``nin_helpers.py`` file on the configured branch."""
    return f"https://raw.githubusercontent.com/{settings.repository}/{settings.branch}/nin_helpers.py"


def setup_source(settings: RepositorySettings) -> str:
    return SETUP_TEMPLATE.format(helpers_url=helpers_url(settings))


def is_badge_cell(cell: dict) -> bool:
    return cell.get("cell_type") == "markdown" and (
        cell.get("id") == BADGE_CELL_ID or cell.get("source", "").lstrip().startswith(f"[![{BADGE_ALT_TEXT}]")
    )


def sync_notebook(notebook: nbformat.NotebookNode, settings: RepositorySettings, notebook_path: str) -> bool:
    """Update the badge cell and the setup cell of ``notebook`` in place, and return whether anything changed.

    The badge cell becomes the first cell. The setup cell is the first code cell that imports
    ``nin_helpers``. When no code cell does, a new setup cell goes before the first code cell.
    The setup cell keeps its outputs and execution count, so rerun the notebook after a change.
    """
    changed = False
    badge = badge_markdown(settings, notebook_path)
    cells = notebook.cells

    badge_cells = [cell for cell in cells if is_badge_cell(cell)]
    if badge_cells:
        badge_cell = badge_cells[0]
        if badge_cell.source != badge:
            badge_cell.source = badge
            changed = True
        if cells[0] is not badge_cell:
            cells.remove(badge_cell)
            cells.insert(0, badge_cell)
            changed = True
    else:
        badge_cell = nbformat.v4.new_markdown_cell(badge)
        badge_cell.id = BADGE_CELL_ID
        cells.insert(0, badge_cell)
        changed = True

    setup = setup_source(settings)
    code_cells = [cell for cell in cells if cell.cell_type == "code"]
    setup_cells = [cell for cell in code_cells if "import nin_helpers" in cell.source]
    if setup_cells and setup_cells[0] is code_cells[0]:
        if code_cells[0].source != setup:
            code_cells[0].source = setup
            changed = True
    else:
        position = cells.index(code_cells[0]) if code_cells else len(cells)
        cells.insert(position, nbformat.v4.new_code_cell(setup))
        changed = True
    return changed


def notebook_title(notebook: nbformat.NotebookNode) -> str:
    """Return the text of the first level-1 heading, without a leading notebook number."""
    for cell in notebook.cells:
        if cell.cell_type != "markdown" or is_badge_cell(cell):
            continue
        for line in cell.source.splitlines():
            if line.startswith("# "):
                return TITLE_NUMBER_PATTERN.sub("", line[2:].strip())
    return ""


def notebooks_table(settings: RepositorySettings, notebooks: list[Path]) -> str:
    """Return README's markdown table: one row per notebook, with its number, a link, its title and a Colab badge."""
    rows = ["| # | Notebook | Topic | Open in Colab |", "| --- | --- | --- | --- |"]
    for path in sorted(notebooks):
        relative = repository_path(path)
        number = path.stem.split("_", 1)[0].lstrip("0") or "0"
        title = notebook_title(nbformat.read(path, as_version=4))
        rows.append(f"| {number} | [`{path.name}`]({relative}) | {title} | {badge_markdown(settings, relative)} |")
    return "\n".join(rows)


def sync_readme(text: str, table: str) -> str:
    """Return ``text`` with the table between the markers replaced, or appended in a new section."""
    block = f"{TABLE_START}\n{table}\n{TABLE_END}"
    start = text.find(TABLE_START)
    end = text.find(TABLE_END)
    if start != -1 and end > start:
        return text[:start] + block + text[end + len(TABLE_END) :]
    if start != -1 or end != -1:
        raise ValueError(f"README.md contains only one of the markers {TABLE_START!r} and {TABLE_END!r}")
    return text.rstrip("\n") + f"\n\n## Notebooks\n\n{README_INTRODUCTION}\n\n{block}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to update (default: every notebooks/*.ipynb); README.md is always updated")
    parser.add_argument("--check", action="store_true",
                        help="change no file; list those that are out of date and exit with status 1")
    args = parser.parse_args(argv)

    settings = load_settings()
    all_notebooks = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    targets = args.notebooks or all_notebooks
    outdated = []

    for path in targets:
        notebook = nbformat.read(path, as_version=4)
        if sync_notebook(notebook, settings, repository_path(path)):
            outdated.append(path)
            if not args.check:
                nbformat.write(notebook, path)

    # README's table lists every notebook in notebooks/, whichever notebooks were named.
    if README.is_file():
        text = README.read_text(encoding="utf-8")
        updated = sync_readme(text, notebooks_table(settings, all_notebooks))
        if updated != text:
            outdated.append(README)
            if not args.check:
                README.write_text(updated, encoding="utf-8")

    verb = "out of date" if args.check else "updated"
    for path in outdated:
        print(f"{verb}: {path}")
    if args.check and outdated:
        print("Run `python tools/sync_notebook_headers.py`, then execute the changed notebooks again.")
        return 1
    if not outdated:
        print(f"{len(targets)} notebook(s) already match [tool.{SETTINGS_TABLE}] in pyproject.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
