"""The notebooks as a researcher meets them: JupyterLab in a real (headless) browser.

Each test starts the project's JupyterLab on 127.0.0.1 (a free port, a random token, its own
runtime, config, settings and workspace folders) serving a temporary folder that holds copies
of the notebook files, so nothing in the repository is written; the kernels get
ENTK_OUT_DIR / ENTK_CACHE_DIR in that temporary folder too. Chromium is the Debian package
(`make test` installs it when run as root); where it is missing these tests are skipped.
The JupyterLab settings the project ships (config/jupyterlab_overrides.json, installed by
`make env`) are also checked without a browser: a first-time user is not asked about news.

On failure a screenshot of the page is saved in the test's tmp_path (its path is printed).
"""

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request

import jupytext
import pytest
from playwright.sync_api import expect, sync_playwright

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package `chromium`; "
                                    "`make test` installs it when run as root with apt-get)")
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPOSITORY, "notebooks")
# The JupyterLab settings `make env` installs (into sys.prefix/share/jupyter/lab/settings/overrides.d/).
LAB_OVERRIDES = os.path.join(REPOSITORY, "config", "jupyterlab_overrides.json")
NOTIFICATIONS = "@jupyterlab/apputils-extension:notification"
# The pop-up JupyterLab 4 shows a first-time user while fetchNews is "none" (not yet answered).
NEWS_QUESTION = "Would you like to get notified about official Jupyter news"
NEWS_GRACE_S = 10     # how long after the lab is restored the news question is awaited
MLP = "01_mlp_modular_addition"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # without these Chromium keeps trying (and failing) to reach Google hosts
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
STARTUP_S = 120       # JupyterLab start, page load (2 shared cores can be slow)
EXECUTION_S = 600     # training the MLP and its eNTK takes well under a minute
# A text-mode tqdm bar that never moved: what JupyterLab shows for a tqdm widget it does not render.
STALE_PROGRESS = re.compile(r"(?<![\d.])0%\|")


class Lab:
    """A running JupyterLab server: the folder it serves and how to reach it."""

    def __init__(self, root, port, token):
        self.root, self.port, self.token = root, port, token

    def url(self, path):
        """Address of `path` on the server (e.g. "lab/tree/x.py"), with the token."""
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def api(self, path):
        """The JSON the server answers for `path` (e.g. "lab/api/settings/<plugin id>")."""
        with urllib.request.urlopen(self.url(path), timeout=30) as response:
            return json.load(response)

    def serve(self, *names):
        """Copy files from notebooks/ into the served folder."""
        for name in names:
            shutil.copy(os.path.join(NOTEBOOKS, name), self.root)


def lab_environment(tmp_path):
    """The server's environment: Jupyter's per-user folders and the notebooks' outputs in tmp_path.

    Only the settings shipped with the environment (sys.prefix) apply, not the user's. The
    kernel must draw inline figures, so a headless MPLBACKEND set by pytest is dropped.
    """
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    folders = {
        "JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data", "JUPYTER_RUNTIME_DIR": "runtime",
        "JUPYTERLAB_SETTINGS_DIR": "user-settings", "JUPYTERLAB_WORKSPACES_DIR": "workspaces",
        "IPYTHONDIR": "ipython", "ENTK_OUT_DIR": "out", "ENTK_CACHE_DIR": "cache",
    }
    for variable, name in folders.items():
        env[variable] = str(tmp_path / name)
    return env


def wait_for_server(server, runtime_dir, log_path):
    """Port and token of the started server, read from its runtime file once it answers."""
    info_file = runtime_dir / f"jpserver-{server.pid}.json"
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {server.returncode}:\n{log_path.read_text()[-3000:]}")
        if info_file.exists():
            info = json.loads(info_file.read_text())
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{info['port']}/api/status?token={info['token']}", timeout=5)
                return info["port"], info["token"]
            except OSError:
                pass
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {STARTUP_S} s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on 127.0.0.1 serving an empty temporary folder; stopped afterwards."""
    root = tmp_path / "served"
    root.mkdir()
    env = lab_environment(tmp_path)
    log_path = tmp_path / "jupyterlab.log"
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
        f"--IdentityProvider.token={secrets.token_hex(16)}", f"--ServerApp.root_dir={root}",
        # window.jupyterapp gives the test the notebook's outputs as JupyterLab holds them
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    with log_path.open("w") as log:
        server = subprocess.Popen(command, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    try:
        port, token = wait_for_server(server, tmp_path / "runtime", log_path)
        yield Lab(root, port, token)
    finally:
        server.terminate()  # the server shuts its kernels down on SIGTERM
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def page(tmp_path, request):
    """A page of headless Chromium with a fresh profile; a screenshot is kept if the test fails."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(STARTUP_S * 1000)
            yield page
            report = getattr(request.node, "rep_call", None)
            if report is not None and not report.passed:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                print(f"screenshot of the page: {tmp_path / 'failure.png'}")
        finally:
            browser.close()


def open_document(page, lab, name):
    """Open `name` the way a double click does (its default viewer); return its cells' locator.

    Fails, saying which viewer was used, if the file opened in the text editor.
    """
    page.goto(lab.url(f"lab/tree/{name}"))
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell, .jp-FileEditor")
    assert page.locator(".jp-FileEditor").count() == 0, (
        f"{name} opened in the text editor, not as a notebook: JupyterLab's default viewer for it "
        "is not 'Jupytext Notebook' (make env installs config/jupyterlab_overrides.json)")
    return page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")


def notebook_state(page, name):
    """The open notebook `name` as JupyterLab holds it: kernel status, active cell, and per
    cell its execution count and error outputs (None while the notebook is not open)."""
    return page.evaluate(
        """(path) => {
            for (const widget of window.jupyterapp.shell.widgets("main")) {
                if (widget.context?.path !== path || !widget.content?.model) continue;
                return {
                    kernel: widget.sessionContext.session?.kernel?.status ?? "no kernel",
                    active: widget.content.activeCellIndex,
                    cells: Array.from(widget.content.model.cells, (cell) => ({
                        count: cell.type === "code" ? cell.executionCount : null,
                        errors: cell.type === "code" ? cell.outputs.toJSON()
                            .filter((o) => o.output_type === "error").map((o) => `${o.ename}: ${o.evalue}`) : [],
                    })),
                };
            }
            return null;
        }""", name)


def wait_for_state(page, name, done, seconds, what):
    """Poll `notebook_state` until `done(state)` holds; return that state, or fail saying `what`
    was awaited and the last state seen."""
    deadline = time.monotonic() + seconds
    while True:
        state = notebook_state(page, name)
        if state is not None and done(state):
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"{name}: {what} not reached after {seconds} s; last state {state}")
        time.sleep(1)


def run_all_above(page, name, cells, index):
    """Once the kernel is idle, select cell `index` and run every cell above it from the Run menu."""
    wait_for_state(page, name, lambda s: s["kernel"] == "idle", STARTUP_S, "an idle kernel")
    cells.nth(index).locator(".jp-InputArea-prompt").click()
    wait_for_state(page, name, lambda s: s["active"] == index, 10, f"cell {index} selected")
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Above Selected Cell").click()


def wait_until_executed(page, name, last):
    """Wait until cell `last` has run or a cell up to it shows an error; return the cells' states."""
    def finished(state):
        cells = state["cells"][: last + 1]
        return cells[last]["count"] is not None or any(c["errors"] for c in cells)
    return wait_for_state(page, name, finished, EXECUTION_S, f"cell {last} executed")["cells"][: last + 1]


def in_browser(test):
    """Mark `test` as a browser test (make test-browser), skipped where Chromium is missing."""
    return pytest.mark.browser(needs_chromium(test))


def test_shipped_lab_settings_never_fetch_jupyter_news():
    with open(LAB_OVERRIDES) as f:
        notifications = json.load(f)[NOTIFICATIONS]
    assert notifications.get("fetchNews") == "false", (
        f"{LAB_OVERRIDES} must set {NOTIFICATIONS} fetchNews to \"false\" (the string): otherwise JupyterLab asks "
        "a first-time user whether to fetch Jupyter news")
    assert notifications.get("checkForUpdates") is False, f"{LAB_OVERRIDES} must set checkForUpdates to false"


@in_browser
def test_lab_does_not_ask_about_jupyter_news(lab, page):
    schema = lab.api(f"lab/api/settings/{NOTIFICATIONS}")["schema"]["properties"]
    defaults = {name: schema[name]["default"] for name in ("fetchNews", "checkForUpdates")}
    assert defaults == {"fetchNews": "false", "checkForUpdates": False}, (
        f"the server's defaults for {NOTIFICATIONS} are {defaults}: the installed JupyterLab settings do not "
        "say no to Jupyter news (make env installs config/jupyterlab_overrides.json)")

    page.goto(lab.url("lab"))
    page.wait_for_function("() => window.jupyterapp !== undefined")
    page.evaluate("() => window.jupyterapp.restored.then(() => true)")  # JupyterLab asks once restored
    question = page.get_by_text(NEWS_QUESTION)
    deadline = time.monotonic() + NEWS_GRACE_S
    while time.monotonic() < deadline:
        assert question.count() == 0, "JupyterLab pops up a question whether to fetch Jupyter news"
        time.sleep(0.5)


@in_browser
def test_mlp_source_opens_as_notebook_and_runs_to_figure_1(lab, page):
    lab.serve(f"{MLP}.py", "jupytext.toml")  # the .py alone: no committed outputs to mistake for new ones
    source = jupytext.read(os.path.join(NOTEBOOKS, f"{MLP}.py")).cells
    figure = next(i for i, c in enumerate(source) if "fig1_mlp_spectrum" in c.source)

    cells = open_document(page, lab, f"{MLP}.py")
    expect(cells, f"the notebook does not show the source's {len(source)} cells").to_have_count(len(source))
    expect(page.locator(".jp-OutputArea-output"), "outputs before anything ran").to_have_count(0)

    run_all_above(page, f"{MLP}.py", cells, figure + 1)
    states = wait_until_executed(page, f"{MLP}.py", figure)
    errors = [f"cell {i}: {e}" for i, s in enumerate(states) for e in s["errors"]]
    assert not errors, "cells show errors:\n" + "\n".join(errors)
    not_run = [i for i, (s, c) in enumerate(zip(states, source)) if c.cell_type == "code" and s["count"] is None]
    assert not not_run, f"code cells {not_run} did not run"

    image = cells.nth(figure).locator(".jp-OutputArea-output img")
    expect(image, "the Figure 1 cell shows no image").to_have_count(1)
    image.scroll_into_view_if_needed()
    size = image.evaluate("(img) => img.decode().then(() => [img.naturalWidth, img.naturalHeight], () => [0, 0])")
    assert min(size) > 0, f"the Figure 1 image did not render (natural size {size})"


@in_browser
def test_committed_mlp_notebook_shows_no_stale_progress_bar(lab, page):
    lab.serve(f"{MLP}.ipynb", "jupytext.toml")
    committed = jupytext.read(os.path.join(NOTEBOOKS, f"{MLP}.ipynb")).cells
    last = max(i for i, c in enumerate(committed) if c.get("outputs"))
    cells = open_document(page, lab, f"{MLP}.ipynb")
    expect(cells.nth(last).locator(".jp-OutputArea-output").first).to_be_attached()  # all outputs are shown
    stale = page.locator(".jp-OutputArea-output").filter(has_text=STALE_PROGRESS)
    expect(stale, "committed outputs show progress bars stuck at 0%").to_have_count(0, timeout=15_000)
