"""JupyterLab in headless Chromium, as a learner uses it: run the slider notebooks and move a slider.

The test starts JupyterLab on 127.0.0.1 with a token, on a copy of notebooks/ and nin_helpers.py
in a temporary folder, so that autosave never touches the repository. Playwright drives the
system's Chromium (Debian's ``chromium`` package): Playwright's own browser download needs a
network that CI does not have. Set NIN_CHROMIUM to use another Chromium binary.

The tests skip when Chromium or Playwright is missing, except on CI (CI set), where they fail.
On a failure, a screenshot is saved under the pytest temporary folder and its path is printed.
"""

import ast
import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

import nin_helpers as nh

ROOT = Path(__file__).resolve().parent.parent
# Notebook 5 trains a model, which takes minutes on a CPU, so only notebooks 1-4 run here.
SLIDER_NOTEBOOKS = sorted((ROOT / "notebooks").glob("0[1-4]_*.ipynb"))
SLIDER_NOTEBOOK = "03_nin_block.ipynb"

SERVER_START_SECONDS = 90
KERNEL_READY_SECONDS = 90
RUN_ALL_SECONDS = 240
WIDGET_SECONDS = 30
OUTPUT_SETTLE_SECONDS = 15
# Text that JupyterLab shows in place of a widget that did not render.
BROKEN_WIDGET_TEXTS = ("Error displaying widget", "model not found", "interactive(children=", "Loading widget")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox does not start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Playwright starts Chromium with a new temporary profile (--user-data-dir) and deletes it afterwards.


def missing_requirement(reason: str):
    """Fail on CI, where every requirement must be installed, and skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; .ci/run must install it", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium_path() -> str:
    path = os.environ.get("NIN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        missing_requirement("Chromium not found: install Debian's chromium package or set NIN_CHROMIUM")
    return path


@pytest.fixture(scope="module")
def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_requirement("Playwright for Python is not installed: pip install -r requirements.txt")
    return sync_playwright


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop the server, then any kernel it left in its process group."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def lab_url(tmp_path_factory):
    """Start JupyterLab on a copy of the notebooks, and yield its base URL and token."""
    workspace = tmp_path_factory.mktemp("lab")
    root = workspace / "root"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy2(ROOT / "nin_helpers.py", root)
    for path in SLIDER_NOTEBOOKS:
        shutil.copy2(path, root / "notebooks")

    # Private Jupyter folders, so that no user setting, kernel or workspace of this machine applies.
    environment = dict(os.environ)
    for variable in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        folder = workspace / variable.lower()
        folder.mkdir()
        environment[variable] = str(folder)
    # The first-run "notified about official Jupyter news?" popup can cover a slider.
    labconfig = workspace / "jupyter_config_dir" / "labconfig"
    labconfig.mkdir()
    (labconfig / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}'
    )

    port = free_port()
    token = os.urandom(16).hex()
    command = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--allow-root",  # CI runs as root
        "--expose-app-in-browser",  # window.jupyterapp, to run the notebook's commands
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.extension_manager=readonly",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log_path = workspace / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=root, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"JupyterLab exited with status {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base_url}/api/status?token={token}", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                log_tail = log_path.read_text()[-3000:]
                pytest.fail(f"JupyterLab did not answer within {SERVER_START_SECONDS} s:\n{log_tail}")
            time.sleep(0.5)
        yield base_url, token
    finally:
        stop_process_group(process)


@pytest.fixture(scope="module")
def browser(chromium_path, sync_playwright):
    from playwright.sync_api import expect

    expect.set_options(timeout=WIDGET_SECONDS * 1000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS,
                                             timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(WIDGET_SECONDS * 1000)
        yield page
    finally:
        context.close()


@contextlib.contextmanager
def screenshot_on_failure(page, folder: Path):
    """Save a screenshot and print the browser's console messages when the block raises."""
    messages = []
    page.on("console", lambda message: messages.append(f"console {message.type}: {message.text}"))
    page.on("pageerror", lambda error: messages.append(f"page error: {error}"))
    try:
        yield
    except Exception:
        path = folder / "failure.png"
        try:
            page.screenshot(path=str(path), timeout=10_000)
            print(f"screenshot saved to {path}")
        except Exception as error:  # the page may have crashed, which must not hide the first error
            print(f"screenshot failed: {error}")
        print("\n".join(message for message in messages if not message.startswith("console debug"))[-5000:])
        raise


def slider_panels(notebook: Path) -> list:
    """Build the panel of each slider cell of ``notebook`` in this process.

    Returns one (report function, sliders by keyword argument) pair per slider cell.
    """
    panels = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "code" or "nh.build_sliders(" not in cell.source:
            continue
        call = ast.parse(cell.source).body[-1].value
        namespace = {"nh": nh}
        report = eval(compile(ast.Expression(call.args[0]), "<report>", "eval"), namespace)
        # Outside a kernel the panel prints its report to stdout, which is not needed here.
        with contextlib.redirect_stdout(io.StringIO()):
            panel = eval(compile(ast.Expression(call), "<slider cell>", "eval"), namespace)
        panels.append((report, {widget._kwarg: widget for widget in panel.kwargs_widgets}))
    return panels


def open_notebook(page, lab_url, name: str) -> None:
    """Open ``notebooks/name`` in JupyterLab and wait until its kernel is ready."""
    base_url, token = lab_url
    page.goto(f"{base_url}/lab/tree/notebooks/{name}?token={token}", timeout=60_000)
    page.wait_for_function(
        f"() => window.jupyterapp?.shell.currentWidget?.context?.path === 'notebooks/{name}'",
        timeout=60_000,
    )
    page.evaluate(
        """async (ms) => {
            const panel = window.jupyterapp.shell.currentWidget;
            const timeout = new Promise((_, reject) =>
                setTimeout(() => reject(new Error(`kernel not ready after ${ms} ms`)), ms));
            await Promise.race([panel.sessionContext.ready, timeout]);
        }""",
        KERNEL_READY_SECONDS * 1000,
    )
    # The saved outputs of widget cells render only once the kernel is idle.
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.status === 'idle'",
        timeout=KERNEL_READY_SECONDS * 1000,
    )
    wait_for_outputs_to_settle(page)


def wait_for_outputs_to_settle(page) -> None:
    """Wait until the text of the outputs stays the same for a second, for at most OUTPUT_SETTLE_SECONDS."""
    deadline = time.monotonic() + OUTPUT_SETTLE_SECONDS
    previous, unchanged_polls = None, 0
    while unchanged_polls < 4 and time.monotonic() < deadline:
        current = output_texts(page)
        unchanged_polls = unchanged_polls + 1 if current == previous else 0
        previous = current
        time.sleep(0.25)


def run_all_cells(page) -> None:
    """Clear the saved outputs, then run every cell and wait for the last one to finish."""
    first_error = page.evaluate(
        """async (ms) => {
            const commands = window.jupyterapp.commands;
            await commands.execute('notebook:clear-all-cell-outputs');
            const timeout = new Promise((_, reject) =>
                setTimeout(() => reject(new Error(`cells still running after ${ms} ms`)), ms));
            if (await Promise.race([commands.execute('notebook:run-all-cells'), timeout])) {
                return null;
            }
            const cells = Array.from(window.jupyterapp.shell.currentWidget.content.model.cells);
            for (const [index, cell] of cells.entries()) {
                const error = cell.type === 'code' && cell.outputs.toJSON().find(o => o.output_type === 'error');
                if (error) {
                    return `cell ${index}: ${error.ename}: ${error.evalue}`;
                }
            }
            return 'no error output found';
        }""",
        RUN_ALL_SECONDS * 1000,
    )
    assert first_error is None, f"running all cells failed at {first_error}"


def output_texts(page) -> str:
    return "\n".join(page.locator(".jp-OutputArea").all_text_contents())


def assert_no_broken_widgets(page, when: str) -> None:
    text = output_texts(page)
    for broken in BROKEN_WIDGET_TEXTS:
        if broken in text:
            # Scroll the output into view so that the failure screenshot shows it.
            page.locator(".jp-OutputArea-output", has_text=broken).first.evaluate("e => e.scrollIntoView()")
        assert broken not in text, f"{when}, an output shows {broken!r}"


def slider_locator(page, description: str):
    return page.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=description))


@pytest.mark.parametrize("notebook", SLIDER_NOTEBOOKS, ids=[path.stem for path in SLIDER_NOTEBOOKS])
def test_slider_notebook_renders_widgets(page, lab_url, notebook, tmp_path):
    from playwright.sync_api import expect

    panels = slider_panels(notebook)
    assert panels, f"{notebook.name} has no nh.build_sliders cell"
    with screenshot_on_failure(page, tmp_path):
        open_notebook(page, lab_url, notebook.name)
        assert_no_broken_widgets(page, "before running")
        run_all_cells(page)

        expected_sliders = sum(len(sliders) for _, sliders in panels)
        expect(page.locator(".widget-slider")).to_have_count(expected_sliders)
        widget_outputs = page.locator(".widget-output")
        expect(widget_outputs).to_have_count(len(panels))
        for index, (report, sliders) in enumerate(panels):
            for widget in sliders.values():
                expect(slider_locator(page, widget.description)).to_have_count(1)
            expected = report(**{name: widget.value for name, widget in sliders.items()})
            expect(widget_outputs.nth(index)).to_have_text(expected)
        assert_no_broken_widgets(page, "after running all cells")


def test_nin_block_slider_updates_output_shape(page, lab_url, tmp_path):
    from playwright.sync_api import expect

    [(report, sliders)] = slider_panels(ROOT / "notebooks" / SLIDER_NOTEBOOK)
    values = {name: widget.value for name, widget in sliders.items()}
    old_side = nh.conv_output_size(values["input_size"], values["kernel_size"], values["stride"], values["padding"])
    # Any input size that changes the output shape works. With 227 pixels the first block outputs 55x55, as in AlexNet.
    new_values = {**values, "input_size": 227}
    side = nh.conv_output_size(227, values["kernel_size"], values["stride"], values["padding"])
    assert side != old_side, "pick an input size that changes the output shape"
    expected = report(**new_values)
    assert f"output {values['out_channels']}x{side}x{side}" in expected

    with screenshot_on_failure(page, tmp_path):
        open_notebook(page, lab_url, SLIDER_NOTEBOOK)
        run_all_cells(page)
        output = page.locator(".widget-output")
        expect(output).to_have_text(report(**values))

        # Typing into the readout and pressing Enter sets a slider the same way in ipywidgets 7 and 8.
        readout = slider_locator(page, sliders["input_size"].description).locator(".widget-readout")
        readout.scroll_into_view_if_needed()
        readout.fill(str(new_values["input_size"]))
        readout.press("Enter")

        expect(readout).to_have_text(str(new_values["input_size"]))
        expect(output).to_have_text(expected)
