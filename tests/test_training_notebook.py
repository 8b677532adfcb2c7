"""Checks special to notebooks/05_training.ipynb that need no training: nbval markers, fresh runs, the seed-study cell.

test_notebook_hygiene.py checks what every notebook must have (badge, setup cell, execution counts).
"""

import json
import re
from pathlib import Path

import matplotlib
import nbformat
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "05_training.ipynb"
IGNORE_MARK = "# NBVAL_IGNORE_OUTPUT"


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def cell_containing(notebook, text):
    matches = [cell for cell in code_cells(notebook) if text in cell.source]
    assert len(matches) == 1, f"expected one code cell containing {text!r}, found {len(matches)}"
    return matches[0]


def test_markdown_before_every_code_cell(notebook):
    for previous, cell in zip(notebook.cells, notebook.cells[1:], strict=False):
        if cell.cell_type == "code":
            assert previous.cell_type == "markdown", f"code cell without an explanation before it:\n{cell.source}"


def test_varying_cells_are_ignored_by_nbval(notebook):
    """Training, timings and accuracies differ between runs, so nbval must not compare their output."""
    varying = ('train_from_scratch("', "nh.plot_history(", "nh.plot_confusion_matrix(", "nh.plot_misclassified(",
               "accuracy_on_training_images(key)", "{seconds[key]:>", 'print(f"device: {device}")')
    for cell in code_cells(notebook):
        if any(text in cell.source for text in varying):
            assert cell.source.startswith(IGNORE_MARK), f"cell output varies between runs:\n{cell.source}"


def test_training_cells_start_fresh(notebook):
    """A checkpoint left by an earlier run would otherwise be resumed, and nbval would see another run."""
    definition = cell_containing(notebook, "def train_from_scratch")
    assert "resume=False" in definition.source
    assert "checkpoint.unlink(missing_ok=True)" in definition.source


def test_no_machine_paths_saved(notebook):
    text = NOTEBOOK.read_text()
    assert str(ROOT) not in text
    assert str(Path.home()) + "/" not in text


def test_four_to_six_exercises(notebook):
    exercises = notebook.cells[-1].source.split("## Exercises", 1)[1]
    count = len(re.findall(r"^\d+\. ", exercises, flags=re.MULTILINE))
    assert 4 <= count <= 6, f"{count} exercises"


def run_docs_cell(notebook, tmp_path, monkeypatch, marker, files):
    """Run the cell containing ``marker`` with ``files`` (name -> JSON value) in docs/."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "docs").mkdir()
    for name, value in files.items():
        (tmp_path / "docs" / name).write_text(json.dumps(value))
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.setattr(plt, "show", lambda: None)
    source = cell_containing(notebook, marker).source
    exec(source, {"json": json, "plt": plt, "Path": Path})  # names the notebook imports in earlier cells
    plt.close("all")


def run_seed_cell(notebook, tmp_path, monkeypatch, rows):
    """Run the seed-study cell with ``rows`` as docs/seed_robustness_cpu.json (None: no file)."""
    files = {} if rows is None else {"seed_robustness_cpu.json": rows}
    run_docs_cell(notebook, tmp_path, monkeypatch, "seed_robustness_cpu.json", files)


def test_seed_cell_without_file(notebook, tmp_path, monkeypatch, capsys):
    run_seed_cell(notebook, tmp_path, monkeypatch, None)
    output = capsys.readouterr().out
    assert "has not been recorded yet" in output
    assert "python benchmarks/seed_robustness.py" in output


def test_seed_cell_counts_per_recipe(notebook, tmp_path, monkeypatch, capsys):
    rows = [
        {"recipe": "lesson", "seed": 0, "test_acc": 0.1, "collapsed": True},
        {"recipe": "lesson", "seed": 1, "test_acc": 0.75, "collapsed": False},
        {"recipe": "lesson", "seed": 2, "test_acc": 0.65, "collapsed": False},
        {"recipe": "improved", "seed": 0, "test_acc": 0.85, "collapsed": False},
        {"recipe": "improved", "seed": 1, "test_acc": 0.83, "collapsed": False},
    ]
    run_seed_cell(notebook, tmp_path, monkeypatch, rows)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "lesson: 1 of 3 seeds above 0.70 test accuracy, 1 collapsed, median 0.650"
    assert lines[1] == "improved: 2 of 2 seeds above 0.70 test accuracy, 0 collapsed, median 0.840"


def run_full_runs_cell(notebook, tmp_path, monkeypatch, files):
    """Run the full-runs cell with ``files`` (name -> records) in docs/."""
    run_docs_cell(notebook, tmp_path, monkeypatch, "full_training_*.json", files)


def full_run(model, recipe, accuracies, train_acc, wall_seconds=1500.0):
    history = [{"epoch": float(i + 1), "test_acc": acc, "train_acc": train_acc} for i, acc in enumerate(accuracies)]
    return {"model": model, "recipe": recipe, "history": history, "parameters": 1_996_642,
            "wall_seconds": wall_seconds, "hardware": "CPU X, 2 logical cores"}


def test_full_runs_cell_without_files(notebook, tmp_path, monkeypatch, capsys):
    run_full_runs_cell(notebook, tmp_path, monkeypatch, {})
    output = capsys.readouterr().out
    assert "No full-length run records found" in output
    assert "python benchmarks/full_training.py" in output


def test_full_runs_cell_reads_every_file(notebook, tmp_path, monkeypatch, capsys):
    files = {
        "full_training_cpu.json": [full_run("nin", "improved (image size 96)", [0.8, 0.9], 0.95)],
        "full_training_gpu.json": [full_run("fc-head", "improved", [0.85, 0.88, 0.91], 0.93, wall_seconds=14.6),
                                   {**full_run("nin", "lesson", [], 0.0), "stopped": "TrainingCollapsed: ..."}],
    }
    run_full_runs_cell(notebook, tmp_path, monkeypatch, files)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("NiN, improved (image size 96): test accuracy 0.800 after epoch 1, 0.900 after epoch 2, "
                        "gap +0.050")
    assert lines[1] == "    1,996,642 parameters, 25 min on CPU X, 2 logical cores"
    assert lines[2] == "FC head, improved: test accuracy 0.850 after epoch 1, 0.910 after epoch 3, gap +0.020"
    assert lines[3] == "    1,996,642 parameters, 15 s on CPU X, 2 logical cores"
    assert lines[4] == "NiN, lesson: stopped before the first epoch ended (TrainingCollapsed: ...)"
