"""Checks on the committed notebooks: clean outputs, sizes, structure, and the Colab badge and setup cell.

The badge and the setup cell must match what tools/sync_notebook_headers.py writes from
``[tool.nin-notebooks]`` in pyproject.toml. When these tests fail after an edit, run
``python tools/sync_notebook_headers.py`` and ``python tools/strip_widget_outputs.py``, and
execute the changed notebooks again.
"""

import base64
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
README = ROOT / "README.md"

MAX_NOTEBOOK_BYTES = 1_500_000
MAX_IMAGE_BYTES = 200_000
MAX_STREAM_LINES = 60
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
HEADING_PATTERN = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def load_tool(name: str):
    """Import a script from tools/, which is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up in sys.modules while the module runs.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sync = load_tool("sync_notebook_headers")
SETTINGS = sync.load_settings()


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def code_cells(notebook: nbformat.NotebookNode) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_notebooks_found():
    assert NOTEBOOKS, "notebooks/ contains no .ipynb file"


@pytest.fixture(params=NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def notebook_path(request) -> Path:
    return request.param


def test_notebook_is_valid_nbformat(notebook_path):
    nbformat.validate(read(notebook_path))


def test_no_saved_widget_state(notebook_path):
    assert "widgets" not in read(notebook_path).metadata, (
        f"{notebook_path.name} stores widget state in metadata.widgets: run tools/strip_widget_outputs.py"
    )


def test_no_saved_widget_outputs(notebook_path):
    # Without the widget state, a saved slider output shows as "interactive(children=(..." text.
    for index, cell in enumerate(code_cells(read(notebook_path)), start=1):
        mimes = [sorted(output.get("data", {})) for output in cell.outputs]
        assert not any(WIDGET_VIEW_MIME in mime for mime in mimes), (
            f"{notebook_path.name}, code cell {index} stores a widget output: run tools/strip_widget_outputs.py"
        )


def test_kernelspec_is_python3(notebook_path):
    kernelspec = read(notebook_path).metadata.get("kernelspec", {})
    assert kernelspec.get("name") == "python3", f"{notebook_path.name} has kernelspec {kernelspec}"


def test_every_code_cell_executed(notebook_path):
    counts = [cell.execution_count for cell in code_cells(read(notebook_path))]
    unexecuted = [index for index, count in enumerate(counts, start=1) if count is None]
    assert not unexecuted, f"{notebook_path.name}: code cells {unexecuted} were never executed"


def test_execution_counts_sequential(notebook_path):
    counts = [cell.execution_count for cell in code_cells(read(notebook_path))]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{notebook_path.name} was not executed top to bottom in one kernel: execution counts {counts}"
    )


def test_no_error_outputs(notebook_path):
    for index, cell in enumerate(code_cells(read(notebook_path)), start=1):
        errors = [f"{output.ename}: {output.evalue}" for output in cell.outputs if output.output_type == "error"]
        assert not errors, f"{notebook_path.name}, code cell {index} shows the error {errors[0]}"


def test_notebook_size_limit(notebook_path):
    size = notebook_path.stat().st_size
    assert size <= MAX_NOTEBOOK_BYTES, f"{notebook_path.name} is {size:,} bytes, over {MAX_NOTEBOOK_BYTES:,}"


def test_image_output_size_limit(notebook_path):
    for index, cell in enumerate(code_cells(read(notebook_path)), start=1):
        for output in cell.outputs:
            for mime, data in output.get("data", {}).items():
                if not mime.startswith("image/"):
                    continue
                text = "".join(data) if isinstance(data, list) else data
                size = len(text.encode()) if mime == "image/svg+xml" else len(base64.b64decode(text))
                assert size <= MAX_IMAGE_BYTES, (
                    f"{notebook_path.name}, code cell {index}: {mime} output of {size:,} bytes, over "
                    f"{MAX_IMAGE_BYTES:,}; lower the figure size or dpi"
                )


def test_stream_output_line_limit(notebook_path):
    for index, cell in enumerate(code_cells(read(notebook_path)), start=1):
        lines = {}
        for output in cell.outputs:
            if output.output_type == "stream":
                lines[output.name] = lines.get(output.name, 0) + output.text.count("\n")
        for name, count in lines.items():
            assert count <= MAX_STREAM_LINES, (
                f"{notebook_path.name}, code cell {index}: {count} lines of {name}, over {MAX_STREAM_LINES}"
            )


def test_ends_with_summary_and_exercises(notebook_path):
    cells = read(notebook_path).cells
    headings = []
    for index, cell in enumerate(cells):
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            match = HEADING_PATTERN.match(line)
            if match:
                headings.append((index, match.group(1)))
    assert [title for _, title in headings[-2:]] == ["Summary", "Exercises"], (
        f"{notebook_path.name}: the last headings are {[title for _, title in headings[-2:]]}"
    )
    summary_index = headings[-2][0]
    trailing_code = [cell for cell in cells[summary_index:] if cell.cell_type == "code"]
    assert not trailing_code, f"{notebook_path.name} has code cells after its Summary heading"


def test_first_cell_is_colab_badge(notebook_path):
    first = read(notebook_path).cells[0]
    expected = sync.badge_markdown(SETTINGS, sync.repository_path(notebook_path))
    assert first.cell_type == "markdown"
    assert first.source == expected, "run tools/sync_notebook_headers.py"


def test_first_code_cell_is_setup(notebook_path):
    first_code = code_cells(read(notebook_path))[0]
    assert first_code.source == sync.setup_source(SETTINGS), "run tools/sync_notebook_headers.py"


def test_setup_cell_prints_nothing(notebook_path):
    first_code = code_cells(read(notebook_path))[0]
    assert first_code.outputs == []


def test_sync_tool_check_passes():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "sync_notebook_headers.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_table_matches_settings():
    if not README.is_file():
        pytest.skip("README.md not found")
    text = README.read_text(encoding="utf-8")
    table = sync.notebooks_table(SETTINGS, NOTEBOOKS)
    assert f"{sync.TABLE_START}\n{table}\n{sync.TABLE_END}" in text, "run tools/sync_notebook_headers.py"


def test_readme_colab_links_match_settings():
    if not README.is_file():
        pytest.skip("README.md not found")
    links = set(re.findall(r"https://colab\.research\.google\.com/github/[^)\s]+", README.read_text(encoding="utf-8")))
    expected = {sync.colab_url(SETTINGS, sync.repository_path(path)) for path in NOTEBOOKS}
    assert links == expected


def test_settings_reject_invalid_repository(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.nin-notebooks]\nrepository = "no-slash"\nbranch = "main"\n')
    with pytest.raises(ValueError, match="OWNER/REPO"):
        sync.load_settings(pyproject)


def test_settings_missing_table(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.ruff]\nline-length = 120\n')
    with pytest.raises(ValueError, match=r"\[tool.nin-notebooks\]"):
        sync.load_settings(pyproject)


def test_sync_inserts_badge_and_setup_cells():
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# 9. Title"), nbformat.v4.new_code_cell("print(1)")]
    assert sync.sync_notebook(notebook, SETTINGS, "notebooks/09_title.ipynb")
    assert [cell.cell_type for cell in notebook.cells] == ["markdown", "markdown", "code", "code"]
    assert notebook.cells[0].source == sync.badge_markdown(SETTINGS, "notebooks/09_title.ipynb")
    assert notebook.cells[2].source == sync.setup_source(SETTINGS)
    assert notebook.cells[3].source == "print(1)"
    assert not sync.sync_notebook(notebook, SETTINGS, "notebooks/09_title.ipynb")


def test_sync_replaces_old_setup_and_badge():
    old_settings = sync.RepositorySettings("someone/old-name", "dev")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# Title"),
                      nbformat.v4.new_code_cell("import sys\nimport nin_helpers as nh")]
    sync.sync_notebook(notebook, old_settings, "notebooks/x.ipynb")
    assert sync.sync_notebook(notebook, SETTINGS, "notebooks/x.ipynb")
    assert [cell.cell_type for cell in notebook.cells] == ["markdown", "markdown", "code"]
    assert "someone/old-name" not in json.dumps(notebook)


def test_readme_sync_appends_then_replaces_table():
    appended = sync.sync_readme("# Project\n", "| table |")
    assert appended.startswith("# Project\n\n## Notebooks\n\n")
    assert appended.endswith(f"\n\n{sync.TABLE_START}\n| table |\n{sync.TABLE_END}\n")
    assert sync.sync_readme(appended, "| new |") == appended.replace("| table |", "| new |")


def run_setup_cell(cwd: Path, prelude: str) -> subprocess.CompletedProcess:
    """Run the setup cell in a fresh isolated interpreter (no PYTHONPATH, cwd not on sys.path)."""
    script = prelude + "\n" + sync.setup_source(SETTINGS) + "\nprint('IMPORTED', nh.__file__, file=sys.stderr)\n"
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-I", "-c", script], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_setup_cell_local_imports_repository_helpers():
    result = run_setup_cell(ROOT / "notebooks", "")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert f"IMPORTED {ROOT / 'nin_helpers.py'}" in result.stderr


def test_setup_cell_on_colab_downloads_helpers(tmp_path):
    # A stand-in google.colab module and urlopen serve the repository's nin_helpers.py, so no network is used.
    prelude = f"""
import io, sys, types, urllib.request
sys.modules["google.colab"] = types.ModuleType("google.colab")
def fake_urlopen(url, timeout=None):
    print("URL", url, file=sys.stderr)
    return io.BytesIO(open({str(ROOT / "nin_helpers.py")!r}, "rb").read())
urllib.request.urlopen = fake_urlopen
"""
    result = run_setup_cell(tmp_path, prelude)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert f"URL {sync.helpers_url(SETTINGS)}" in result.stderr
    assert f"IMPORTED {tmp_path / 'nin_helpers.py'}" in result.stderr
    assert (tmp_path / "nin_helpers.py").read_bytes() == (ROOT / "nin_helpers.py").read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir() if path.name != "__pycache__") == ["nin_helpers.py"]
