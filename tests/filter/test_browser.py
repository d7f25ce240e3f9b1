"""The user's view: notebook 02 run in a real JupyterLab in headless Chromium shows the rejected structure.

Starts JupyterLab on loopback with a copy of ``notebooks/02_filter.ipynb`` whose parameters point at
small databases made here (a known reject, COD 2102163 with close contacts, and a clean crystal), opens
it in Debian's Chromium driven by Playwright (no browser download), runs all cells from the menu, and
checks that the nglview widget drew the rejected structure: a WebGL canvas of nonzero size whose
pixels are not blank, and no widget or Python error in the page. A screenshot is saved to
``tests/artifacts/``.

Runs in CI (``CI`` set: a missing Chromium or Playwright is a failure; ``.ci/setup-browser.sh``
installs Chromium); skipped locally when either is absent.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
#: COD 2102163 is rejected for close contacts (the viewer draws it); 1011063 (ice) passes
COD_IDS = (2102163, 1011063)
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--use-gl=angle", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _require(condition: bool, what: str) -> None:
    """Fail in CI, skip elsewhere."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI must run the browser test: see .ci/setup-browser.sh)")
    pytest.skip(what)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook_copy(folder: Path) -> Path:
    """notebooks/02_filter.ipynb with its parameters pointing at the test's databases."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "02_filter.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n".join([  # the notebook's own defaults stay; the databases are overridden
        "\n# the test's databases",
        f"raw_db = {str(folder / 'raw.db')!r}",
        f"clean_db = {str(folder / 'clean.db')!r}",
        f"rejects_db = {str(folder / 'rejects.db')!r}",
    ])
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    path = folder / "02_filter.ipynb"
    nbformat.write(nb, path)
    return path


def _start_lab(folder: Path, port: int, token: str) -> subprocess.Popen:
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(folder / ".jupyter"),
           "JUPYTER_RUNTIME_DIR": str(folder / ".runtime"), "JUPYTERLAB_WORKSPACES_DIR": str(folder / ".ws"),
           "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
           "--port", str(port), f"--ServerApp.token={token}", f"--ServerApp.root_dir={folder}",
           "--ServerApp.open_browser=False", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = open(folder / "jupyterlab.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited: {(folder / 'jupyterlab.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                json.load(answer)
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("JupyterLab did not answer within 120 s")


def _canvas_pixels(png: bytes) -> tuple[int, float]:
    """Distinct colours and the fraction of pixels that differ from the most common (background) one."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 24) or []
    total = image.width * image.height
    background = max(colours)[0] if colours else total
    return len(colours), 1.0 - background / total


def test_filter_notebook_shows_the_reject_in_jupyterlab(tmp_path, cod_dir):
    _require(Path(CHROMIUM).exists(), f"Chromium not found at {CHROMIUM}")
    try:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "Python package playwright not installed")
    from helpers.fetch.stage import fetch

    folder = tmp_path / "lab"
    folder.mkdir()
    fetch(source=str(cod_dir), raw_db=str(folder / "raw.db"), cod_ids=COD_IDS, progress=False)
    notebook = _notebook_copy(folder)
    port, token = _free_port(), secrets.token_hex(16)
    lab = _start_lab(folder, port, token)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "02_filter_jupyterlab.png"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                console = []
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.goto(f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}",
                          wait_until="domcontentloaded")
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
                try:  # JupyterLab may ask which kernel to start: accept its proposal (the venv's Python)
                    page.click(".jp-Dialog .jp-Dialog-button.jp-mod-accept", timeout=20_000)
                except PlaywrightTimeout:
                    pass
                # kernel ready ("Idle" in the toolbar's kernel status), then Run > Run All Cells
                page.wait_for_function(
                    "() => !!document.querySelector('.jp-Notebook') && "
                    "[...document.querySelectorAll('.jp-Toolbar-kernelStatus, .jp-KernelStatus, "
                    "[data-status]')].some(e => /idle/i.test(e.textContent + ' ' + e.getAttribute('data-status')))",
                    timeout=120_000)
                page.click(".lm-MenuBar-itemLabel:text-is('Run')")
                page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
                try:
                    canvas = page.wait_for_selector(".jp-OutputArea-output canvas", state="attached",
                                                    timeout=180_000)
                except Exception:
                    page.screenshot(path=str(ARTIFACTS / "02_filter_jupyterlab_failed.png"), full_page=True)
                    raise AssertionError(f"no NGL canvas; notebook text: {page.inner_text('.jp-Notebook')[-3000:]}"
                                         f"\nconsole: {console[-30:]}") from None
                canvas.scroll_into_view_if_needed()
                # wait until every cell has run (no '[*]' prompt left) and the canvas has been painted
                page.wait_for_function(
                    "() => ![...document.querySelectorAll('.jp-InputArea-prompt')]"
                    ".some(p => p.textContent.includes('*'))", timeout=300_000)
                size = canvas.evaluate("c => [c.width, c.height, !!(c.getContext('webgl2') || "
                                       "c.getContext('webgl'))]")
                colours, painted = 0, 0.0
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    colours, painted = _canvas_pixels(canvas.screenshot())
                    if colours > 20 and painted > 0.005:
                        break
                    time.sleep(1)
                page.screenshot(path=str(shot), full_page=True)
                text = page.inner_text(".jp-Notebook")
                errors = page.query_selector_all("[data-mime-type='application/vnd.jupyter.error']")
            finally:
                browser.close()
    finally:
        lab.terminate()
        try:
            lab.wait(timeout=20)
        except subprocess.TimeoutExpired:
            lab.kill()
    assert shot.stat().st_size > 10_000
    assert not errors, f"a cell raised: {text[-3000:]}"
    for bad in ("Error displaying widget", "Failed to load model class", "Error rendering output"):
        assert bad not in text, f"{bad!r} in the notebook; console: {console[-20:]}"
    assert "cod-2102163" in text and "close" in text.lower(), "the reject table names the close-contact reject"
    assert size[0] > 100 and size[1] > 100 and size[2], f"canvas {size} (WebGL context expected)"
    assert colours > 20 and painted > 0.005, (
        f"the NGL canvas looks blank: {colours} colours, {painted:.4f} of pixels off-background "
        f"(screenshot: {shot}); console: {console[-20:]}")

