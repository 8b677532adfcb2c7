"""The notebooks' slider cells, built outside a kernel with the installed ipywidgets.

Each test runs the code of a notebook cell that calls ``nh.build_sliders``, so a change to a
notebook's sliders is tested as it is written. Outside a kernel, the panel's print goes to
stdout, which pytest captures. ``make test`` runs this file with ipywidgets 8 and then with
ipywidgets 7.7.1 (as on Google Colab); NIN_EXPECTED_IPYWIDGETS_MAJOR names the major version
that run must import.
"""

import ast
import os
import re
from pathlib import Path

import ipywidgets
import matplotlib
import nbformat
import pytest

import nin_helpers as nh

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_MAJOR_VARIABLE = "NIN_EXPECTED_IPYWIDGETS_MAJOR"
# Outside a kernel, IPython's clear_output() prints this terminal sequence in place of clearing.
CLEAR_SEQUENCE = re.compile(r"\x1b\[2K\r?")
MOVES = 5


def slider_cells() -> list[tuple[str, str]]:
    """Return (test id, source) for every code cell of notebooks/*.ipynb that calls nh.build_sliders."""
    cells = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        code = [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
        for index, cell in enumerate(code, start=1):
            if "nh.build_sliders(" in cell.source:
                cells.append((f"{path.stem}-cell{index}", cell.source))
    return cells


SLIDER_CELLS = slider_cells()


class SliderCell:
    """A slider cell's panel, its report function and a reader for the text it printed."""

    def __init__(self, source: str, capsys: pytest.CaptureFixture[str]):
        self.capsys = capsys
        capsys.readouterr()
        self.panel, self.report = build_panel(source)

    def sliders(self) -> dict:
        return {widget._kwarg: widget for widget in self.panel.kwargs_widgets}

    def expected_text(self) -> str:
        return self.report(**{name: widget.value for name, widget in self.sliders().items()})

    def shown_text(self) -> str:
        """Return what the panel printed since the last call, without clear_output's terminal codes."""
        return CLEAR_SEQUENCE.sub("", self.capsys.readouterr().out)


def build_panel(source: str):
    """Run a slider cell's code, and return the panel that its last expression builds and its report function."""
    tree = ast.parse(source)
    last = tree.body[-1]
    assert isinstance(last, ast.Expr), "a slider cell must end with the nh.build_sliders(...) expression"
    call = last.value
    assert isinstance(call, ast.Call) and ast.unparse(call.func) == "nh.build_sliders", ast.unparse(call.func)
    namespace = {"nh": nh}
    exec(compile(ast.Module(body=tree.body[:-1], type_ignores=[]), "<slider cell>", "exec"), namespace)
    report = eval(compile(ast.Expression(call.args[0]), "<report>", "eval"), namespace)
    panel = eval(compile(ast.Expression(call), "<slider cell>", "eval"), namespace)
    return panel, report


def other_value(widget):
    """Return a valid value of ``widget`` that differs from its current one: its max, or its min at the max."""
    return widget.min if widget.value == widget.max else widget.max


def test_slider_cells_found():
    assert SLIDER_CELLS, "no notebook cell calls nh.build_sliders"


def test_expected_ipywidgets_major():
    expected = os.environ.get(EXPECTED_MAJOR_VARIABLE)
    if not expected:
        pytest.skip(f"{EXPECTED_MAJOR_VARIABLE} is not set")
    assert ipywidgets.__version__.split(".")[0] == expected, (
        f"expected ipywidgets {expected}.x, imported {ipywidgets.__version__} from {ipywidgets.__file__}"
    )


@pytest.fixture(params=SLIDER_CELLS, ids=[test_id for test_id, _ in SLIDER_CELLS])
def slider_cell(request, capsys) -> SliderCell:
    plt.close("all")
    return SliderCell(request.param[1], capsys)


def test_initial_output_is_report(slider_cell):
    # ipywidgets 7 runs the function only once the panel is shown, unless build_sliders calls update().
    assert slider_cell.shown_text() == slider_cell.expected_text() + "\n"


def test_sliders_update_on_release_only(slider_cell):
    for name, widget in slider_cell.sliders().items():
        assert widget.continuous_update is False, f"slider {name!r} updates while it is dragged"


def test_output_follows_each_slider(slider_cell):
    slider_cell.shown_text()
    for name, widget in slider_cell.sliders().items():
        before = slider_cell.expected_text()
        widget.value = other_value(widget)
        after = slider_cell.expected_text()
        assert after != before, f"moving {name!r} to {widget.value} does not change the report"
        assert slider_cell.shown_text() == after + "\n", f"output is stale after moving {name!r}"


def test_moving_sliders_keeps_figures_bounded(slider_cell):
    figures_after_build = len(plt.get_fignums())
    widget = next(iter(slider_cell.sliders().values()))
    for _ in range(MOVES):
        widget.value = other_value(widget)
    figures = len(plt.get_fignums())
    if figures_after_build == 0:
        assert figures == 0, f"the report opened {figures} figure(s) after {MOVES} moves but none at first"
    else:
        assert figures <= 1, f"{figures} figures are open after {MOVES} moves: close the previous one each time"
    plt.close("all")
