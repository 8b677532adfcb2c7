"""Remove saved widget state and widget outputs from notebooks, after they were executed.

Executing a notebook with ``jupyter nbconvert --execute`` stores the sliders twice: the widget
state in ``metadata.widgets``, and an output whose data contains a widget view plus a text
fallback such as "interactive(children=(IntSlider(...". Without the state, JupyterLab, GitHub
and Colab show that text fallback in place of the sliders, so both are removed. A slider cell
then shows nothing until it runs. Its execution count stays.

Usage, from any folder:

    python tools/strip_widget_outputs.py                   # every notebooks/*.ipynb
    python tools/strip_widget_outputs.py notebooks/03_nin_block.ipynb
    python tools/strip_widget_outputs.py --check           # change nothing; exit 1 if a notebook has widgets
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"


def is_widget_output(output: dict) -> bool:
    return WIDGET_VIEW_MIME in output.get("data", {})


def strip_widgets(notebook: nbformat.NotebookNode) -> bool:
    """Remove ``metadata.widgets`` and every widget output in place; return whether anything changed."""
    changed = notebook.metadata.pop("widgets", None) is not None
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        remaining_outputs = [output for output in cell.outputs if not is_widget_output(output)]
        if len(remaining_outputs) != len(cell.outputs):
            cell.outputs = remaining_outputs
            changed = True
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to clean (default: every notebooks/*.ipynb)")
    parser.add_argument("--check", action="store_true",
                        help="change no file; list the notebooks with widget state or outputs and exit with status 1")
    args = parser.parse_args(argv)

    changed = []
    for path in args.notebooks or sorted(NOTEBOOKS_DIR.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        if strip_widgets(notebook):
            changed.append(path)
            if not args.check:
                nbformat.write(notebook, path)

    for path in changed:
        print(f"{'has widget state or outputs' if args.check else 'stripped'}: {path}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
