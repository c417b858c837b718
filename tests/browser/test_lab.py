"""The tutorials in a real browser: JupyterLab on loopback, headless Chromium driven by Playwright.

nbval runs the notebooks' kernels but never the front end; these tests open every notebook in JupyterLab, run all
cells, and check what a researcher sees: no cell error, no browser console error, the figures each notebook
promises rendered, and a scripted interaction per widget panel changing what is drawn. A screenshot of the page is
written to ``$INFERNB_BROWSER_ARTIFACTS`` (default: the test's tmp dir) when a check fails.

Needs Chromium (``apt-get install chromium``, or ``INFERNB_CHROMIUM=/path/to/chrome``) and ``pip install
playwright`` (the browser download of ``playwright install`` is not needed: the system executable is used).
Without them every test here is skipped, saying so.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHROMIUM = os.environ.get("INFERNB_CHROMIUM") or next(
    (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
try:
    import playwright.sync_api as pw
except ImportError:                      # pragma: no cover - depends on the machine
    pw = None

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(pw is None or CHROMIUM is None,
                       reason="browser tests need Chromium and Playwright: apt-get install chromium (or set "
                              "INFERNB_CHROMIUM) and pip install playwright"),
]

#: Figures a widget panel draws (plotly FigureWidgets), beyond the static figures saved in the notebook.
PANEL_FIGURES = {"SchedulerExplorer": 2, "KVLayoutExplorer": 2, "VariantEditor": 2, "ProfilerPanel": 2}
PLOTLY = "application/vnd.plotly.v1+json"


def expected_figures(path: Path) -> int:
    """The plotly figures a notebook shows once run: its saved static figures plus its panels' figure widgets."""
    nb = nbformat.read(path, as_version=4)
    n = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        n += sum(PLOTLY in o.get("data", {}) for o in cell.get("outputs", []))
        n += sum(k for name, k in PANEL_FIGURES.items() if f"widgets.{name}(" in cell.source)
    return n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on loopback over a copy of the notebooks (the repository's files are never saved)."""

    def __init__(self, root: Path):
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        shutil.copytree(ROOT / "notebooks", root, dirs_exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   JUPYTER_CONFIG_DIR=str(root / ".jupyter-config"))
        args = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
                f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
                "--ServerApp.open_browser=False"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--allow-root")
        self.log = open(root / "server.log", "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                self.api("GET", "/api/status")
                return
            except OSError:
                time.sleep(0.5)
        self.close()
        raise RuntimeError(f"JupyterLab did not start; see {root / 'server.log'}")

    def api(self, method: str, path: str):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}?token={self.token}", method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def clear_sessions(self) -> None:
        """Shut every kernel down: each notebook runs in a fresh kernel importing this checkout."""
        for s in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{s['id']}")

    def url(self, name: str) -> str:
        # a fresh workspace: JupyterLab would otherwise restore the previously opened notebooks
        return f"http://127.0.0.1:{self.port}/lab/workspaces/t{uuid.uuid4().hex[:8]}/tree/{name}?reset&token={self.token}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    srv = Lab(tmp_path_factory.mktemp("lab"))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def browser():
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Page:
    """One notebook open in JupyterLab, with the browser console's errors collected."""

    def __init__(self, browser, lab: Lab, name: str, artifacts: Path):
        self.name, self.lab, self.artifacts = name, lab, artifacts
        self.page = browser.new_page(viewport={"width": 1500, "height": 1100})
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text[:500]))
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {str(e)[:500]}"))
        lab.clear_sessions()
        self.page.goto(lab.url(name))
        self.page.wait_for_selector(".jp-NotebookPanel", timeout=90_000)
        try:                                            # "Select Kernel", where JupyterLab asks
            self.page.wait_for_selector(".jp-Dialog .jp-mod-accept", timeout=5_000)
            self.page.click(".jp-Dialog .jp-mod-accept")
        except pw.TimeoutError:
            pass

    @property
    def panel(self):
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")

    def run_all(self, timeout_s: float = 900) -> None:
        self.page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached",
                                    timeout=90_000)
        self.page.click("text=Run")
        self.page.click("text=Run All Cells")
        self.wait_idle(timeout_s)

    def wait_idle(self, timeout_s: float = 120) -> None:
        """Until every code cell has an execution count (none queued or running)."""
        self.page.wait_for_function(
            "() => { const p = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) "
            ".jp-CodeCell .jp-InputPrompt')].map(e => e.textContent);"
            " return p.length > 0 && p.every(t => /\\[\\d+\\]/.test(t)); }", timeout=timeout_s * 1000)
        time.sleep(1.5)                                 # widget views and plotly finish drawing

    def saved_notebook(self):
        """Save the notebook in the browser and read it back from the server's copy."""
        path = self.lab.root / self.name
        before = path.stat().st_mtime
        self.page.keyboard.press("Control+s")
        deadline = time.time() + 20
        while path.stat().st_mtime == before and time.time() < deadline:
            time.sleep(0.2)
        return nbformat.read(path, as_version=4)

    def figures(self) -> int:
        return self.panel.locator(".js-plotly-plot").count()

    def fail(self, msg: str):
        shot = self.artifacts / f"{Path(self.name).stem}.png"
        self.page.screenshot(path=str(shot), full_page=True)
        pytest.fail(f"{self.name}: {msg} (screenshot: {shot})")

    def check(self, ok: bool, msg: str) -> None:
        if not ok:
            self.fail(msg)


@pytest.fixture
def artifacts(tmp_path):
    out = Path(os.environ.get("INFERNB_BROWSER_ARTIFACTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_jupyterlab(browser, lab, artifacts, path):
    """Run all cells in JupyterLab: no cell error, no console error, every promised figure drawn."""
    page = Page(browser, lab, path.name, artifacts)
    try:
        page.run_all()
        nb = page.saved_notebook()
        errs = [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb.cells)
                if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
        page.check(not errs, f"cell errors {errs}")
        page.check(not page.errors, f"browser console errors {page.errors}")
        want, got = expected_figures(path), page.figures()
        page.check(got >= want, f"{got} plotly figures drawn, {want} expected")
    finally:
        page.page.close()


def _scratch(lab: Lab, name: str, cells: list[str]) -> str:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, lab.root / name)
    return name


def test_scheduler_explorer_in_a_new_notebook_and_its_preset(browser, lab, artifacts):
    """A bare SchedulerExplorer draws its Gantt and merge map without console errors (it used to fail to
    initialize: figure widgets changed before the browser showed them); changing the preset redraws the merge map
    in place, with no leftover "nothing to merge" note over a map of split rows."""
    name = _scratch(lab, "scratch_scheduler.ipynb", [
        "import infernb as ib\nx = ib.widgets.SchedulerExplorer(preset='uniform')\nx"])
    page = Page(browser, lab, name, artifacts)
    try:
        page.run_all()
        page.check(not page.errors, f"console errors {page.errors}")
        page.check(page.figures() == 2, f"{page.figures()} figures, 2 expected")
        notes = page.panel.locator(".js-plotly-plot .annotation-text")
        page.check("no row was split: nothing to merge" in notes.all_text_contents(), "uniform: note missing")
        page.panel.locator(".widget-dropdown select").first.select_option(label="one long + many short")
        page.page.wait_for_function(
            "() => [...document.querySelectorAll('.js-plotly-plot .gtitle')].some(t => t.textContent.includes("
            "'Merge map: 50 split rows'))", timeout=30_000)
        texts = notes.all_text_contents()
        page.check(not any("nothing to merge" in t for t in texts), f"stale note over the new map: {texts}")
        page.check(not page.errors, f"console errors after the preset change {page.errors}")
    finally:
        page.page.close()


def test_kv_layout_explorer_table_fork_and_geometry(browser, lab, artifacts):
    """The pool's table shows its row labels from the first render (they were blank until the first action) and
    all of them after a fork; changing the page size redraws the pool without pressing "rebuild"."""
    name = _scratch(lab, "scratch_kv.ipynb", ["import infernb as ib\nx = ib.widgets.KVLayoutExplorer()\nx"])
    page = Page(browser, lab, name, artifacts)
    labels = ["pages\u00a0used", "pages\u00a0free", "pages\u00a0shared", "sharing\u00a0saved\u00a0pages"]

    def table_text():
        return " ".join(page.panel.locator(".js-plotly-plot .table .cell-text").all_text_contents())

    def pool_title():
        return page.panel.locator(".js-plotly-plot .gtitle").first.text_content()

    try:
        page.run_all()
        page.check(not page.errors, f"console errors {page.errors}")
        page.check(page.figures() == 2, f"{page.figures()} figures, 2 expected")
        missing = [t for t in labels if t not in table_text()]
        page.check(not missing, f"first render: table rows without labels {missing}")
        page.panel.locator("button", has_text="fork").click()
        page.page.wait_for_function("() => document.body.innerText.includes('forked sequence')", timeout=30_000)
        time.sleep(1.5)
        missing = [t for t in labels if t not in table_text()]
        page.check(not missing, f"after a fork: table rows missing {missing}")
        before = pool_title()
        page.panel.locator(".widget-dropdown select").first.select_option(label="4")
        page.page.wait_for_function(
            "t => document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .js-plotly-plot .gtitle')"
            ".textContent !== t", arg=before, timeout=30_000)
        page.check(not page.errors, f"console errors after the actions {page.errors}")
    finally:
        page.page.close()


def _panel(browser, lab, artifacts, name: str, widget: str) -> Page:
    """A new notebook showing a bare ``ib.widgets.<widget>()``, run: no console error, its figures drawn."""
    page = Page(browser, lab, _scratch(lab, name, [f"import infernb as ib\nx = ib.widgets.{widget}()\nx"]), artifacts)
    try:
        page.run_all()
        page.check(not page.errors, f"console errors {page.errors}")
        page.check(page.figures() == PANEL_FIGURES[widget],
                   f"{page.figures()} figures, {PANEL_FIGURES[widget]} expected")
    except BaseException:
        page.page.close()
        raise
    return page


def test_variant_editor_builtin_then_edit_then_compile(browser, lab, artifacts):
    """Pick a built-in: its code appears in the box; edit the box and compile: the edited variant is what gets
    compiled (status and figure titles name it), with no console error."""
    page = _panel(browser, lab, artifacts, "scratch_variant.ipynb", "VariantEditor")
    try:
        page.panel.locator(".widget-dropdown select").first.select_option(label="softcap_30")
        box = page.panel.locator(".widget-textarea textarea").first
        page.page.wait_for_function("b => b.value.includes('softcap(30.0)')", arg=box.element_handle(),
                                    timeout=30_000)
        box.fill(box.input_value().replace("softcap(30.0)", "softcap(12.0)"))
        box.blur()
        page.panel.locator("button", has_text="compile").click()
        page.page.wait_for_function("() => document.body.innerText.includes('softcap_12')", timeout=120_000)
        time.sleep(1.5)
        page.check("softcap_12" in page.panel.inner_text(), "the edited variant was not the one compiled")
        page.check(not page.errors, f"console errors after compile {page.errors}")
    finally:
        page.page.close()


def test_profiler_panel_committed_problems(browser, lab, artifacts):
    """Without a GPU the panel draws the committed run's bars and roofline, labelled as committed; choosing another
    problem redraws the bars in place."""
    page = _panel(browser, lab, artifacts, "scratch_profiler.ipynb", "ProfilerPanel")
    try:
        page.check("committed run" in page.panel.inner_text(), "the committed run is not labelled as such")
        page.panel.locator(".widget-dropdown select").first.select_option(label="prefill 1 x 8192")
        page.page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .js-plotly-plot .gtitle')]"
            ".some(t => t.textContent.startsWith('prefill 1 x 8192'))", timeout=30_000)
        bars = page.panel.locator(".js-plotly-plot").first.locator(".ytick").all_text_contents()
        page.check(any("FlashInfer" in b for b in bars), f"the plain prefill's paths are not drawn: {bars}")
        page.check(not page.errors, f"console errors after choosing a problem {page.errors}")
    finally:
        page.page.close()

