"""End to end in a real browser: JupyterLab on 127.0.0.1 (token auth) serves a notebook whose
kernel starts the emulator (a 429 queued for the first request) and shows the ImageGenForm;
headless Chromium (Debian's /usr/bin/chromium driven by Playwright) runs all cells, types a
prompt, clicks Generate and waits for the image. Checks: the image rendered (naturalWidth > 0),
the retry appeared in the live log, the kernel stayed idle while the request was in flight, the
button was disabled meanwhile, and the result went to the history; then an input image is
uploaded through the real FileUpload and a request that hangs is cancelled from the page.
Screenshots go to test-artifacts/: widget-browser.png (the page once the image is there),
widget-browser-form.png (the form alone), widget-browser-cancel.png (after Cancel), and
widget-browser-failure.png when the test fails.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

CHROMIUM = os.environ.get("IMAGEGEN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-proxy-server"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PROMPT = "a lighthouse at dusk, seen from the beach"
EMU_TOKEN = "sk-browser-emulator-token-0123456789"

SETUP_CELL = f"""\
import os, tempfile
from jupyter_imagegen.emulator import EmulatorThread
emu = EmulatorThread(token={EMU_TOKEN!r}, latency=0.8).start()
# the first request is rate limited (the log shows the retry), its retry passes, and the request
# after that hangs for 20 s (the test cancels it from the page)
emu.add_faults("429:retry_after=1", "ok", "slow_headers:delay=20")
os.environ.update(IMAGE_AUTH_TOKEN={EMU_TOKEN!r}, IMAGE_API_TYPE="openai_images",
                  IMAGE_BASE_URL=emu.base_url_for("openai_images"), IMAGE_CACHE="0",
                  IMAGE_CACHE_DIR=tempfile.mkdtemp(prefix="imagegen-cache-"))
print("emulator at", emu.url)
"""
FORM_CELL = """\
from jupyter_imagegen.widget import ImageGenForm
form = ImageGenForm(n=1)
form
"""


def _missing() -> str:
    if not Path(CHROMIUM).exists():
        return (f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium "
                "chromium-driver; .ci/run does) to run the browser test")
    for mod in ("playwright", "jupyterlab", "jupyterlab_widgets"):
        try:
            __import__(mod)
        except ImportError:
            return f"the browser test needs the {mod} package (pip install playwright jupyterlab)"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(cells) -> dict:
    return {
        "cells": [{"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
                  for src in cells],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def _api(base: str, token: str, path: str, method: str = "GET", timeout: float = 5.0):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # loopback: never a proxy
    with opener.open(req, timeout=timeout) as resp:
        body = resp.read()
        return json.loads(body) if body else None


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on 127.0.0.1:<free port> with a random token, rooted in a temp dir holding
    form.ipynb; Jupyter's config/data/runtime dirs are private to the test."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "root"
    root.mkdir()
    (root / "form.ipynb").write_text(json.dumps(_notebook([SETUP_CELL, FORM_CELL]), indent=1))
    from PIL import Image
    Image.new("RGB", (320, 200), (30, 150, 90)).save(root / "sketch.png")
    home = tmp_path / "jupyter"
    config_dir = home / "config"
    (config_dir / "labconfig").mkdir(parents=True)
    # no news/update popups over the notebook (and no attempt to fetch them)
    (config_dir / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    # the notebook's "python3" kernel is this interpreter (the user data dir wins over any
    # system-wide kernelspec), so it imports the package and the test dependencies under test
    spec_dir = home / "data" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python"}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("IMAGE_"):
            del env[k]                    # the notebook configures the kernel itself
    env.update(JUPYTER_CONFIG_DIR=str(config_dir), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "lab-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "lab-workspaces"),
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    log_path = tmp_path / "jupyterlab.log"
    log_file = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly"]                # offline: never ask PyPI
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=str(root))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                _api(base, token, "/api/status")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within 60 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.25)
        yield {"base": base, "token": token, "root": root, "log": log_path}
    finally:
        try:  # shut the kernels down through the API (the emulator thread dies with its kernel)
            for k in _api(base, token, "/api/kernels") or []:
                _api(base, token, f"/api/kernels/{k['id']}", method="DELETE", timeout=10)
        except Exception:
            pass
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log_file.close()


def test_form_in_jupyterlab_shows_retry_and_image(lab):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "widget-browser.png"
    form_shot = ARTIFACTS / "widget-browser-form.png"
    cancel_shot = ARTIFACTS / "widget-browser-cancel.png"
    ok = False
    console = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.set_default_timeout(30_000)
            try:
                page.goto(f"{lab['base']}/lab/tree/form.ipynb?token={lab['token']}", wait_until="domcontentloaded")
                page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=45_000)
                page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=45_000)
                # the kernel is up when the notebook's session reports it idle
                page.wait_for_function(
                    """() => { const w = window.jupyterapp.shell.currentWidget;
                               const k = w && w.sessionContext && w.sessionContext.session
                                         && w.sessionContext.session.kernel;
                               return k && k.status === 'idle'; }""", timeout=45_000)
                page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

                prompt = page.wait_for_selector(".imagegen-prompt textarea", timeout=45_000)
                assert "emulator at http://127.0.0.1:" in page.inner_text(".jp-NotebookPanel")
                prompt.fill(PROMPT)
                generate = page.locator("button.imagegen-generate")
                # the kernel received the prompt (the Textarea syncs on input): then click
                page.wait_for_timeout(300)
                generate.click()

                # while the request is in flight: button disabled, the retry in the log, kernel idle
                page.wait_for_function(
                    "() => { const l = document.querySelector('.imagegen-output .imagegen-log');"
                    "        return l && /429/.test(l.innerText) && /retrying/.test(l.innerText); }",
                    timeout=30_000)
                assert generate.is_disabled()
                assert page.locator(".imagegen-output img").count() == 0, "the image came before the check"
                status = page.evaluate(
                    "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status")
                assert status == "idle", f"the kernel is {status} while the form waits: it must stay free"

                # the image arrives and really renders
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.imagegen-output img')]"
                    "       .some(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0)", timeout=30_000)
                sizes = page.eval_on_selector_all(".imagegen-output img", "els => els.map(i => [i.naturalWidth, i.naturalHeight])")
                assert sizes and all(w > 0 and h > 0 for w, h in sizes), sizes
                log_text = page.inner_text(".imagegen-output .imagegen-log")
                assert "429" in log_text and "retrying" in log_text and "done" in log_text, log_text
                # the run is in the history, with a rendered thumbnail and its buttons
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.imagegen-history-entry img')]"
                    "       .some(i => i.complete && i.naturalWidth > 0)", timeout=15_000)
                entry = page.inner_text(".imagegen-history-entry")
                assert PROMPT in entry and "use as input" in entry and "reuse settings" in entry, entry
                page.wait_for_function("() => !document.querySelector('button.imagegen-generate').disabled",
                                       timeout=10_000)
                page.locator(".imagegen-form").scroll_into_view_if_needed()
                page.screenshot(path=str(shot))                            # the retry, the image, the history
                page.locator(".imagegen-form").screenshot(path=str(form_shot))

                # an input image through the real FileUpload, then a request that hangs: Cancel it
                with page.expect_file_chooser() as chooser:
                    page.click(".imagegen-upload")
                chooser.value.set_files(str(lab["root"] / "sketch.png"))
                page.wait_for_function("() => [...document.querySelectorAll('.imagegen-input img')]"
                                       "       .some(i => i.complete && i.naturalWidth > 0)", timeout=15_000)
                assert "sketch.png" in page.inner_text(".imagegen-input")
                prompt.fill("the sketch as a painting")
                page.wait_for_timeout(300)
                generate.click()
                page.wait_for_function(
                    "() => /attempt 1/.test((document.querySelector('.imagegen-log') || {}).innerText || '')",
                    timeout=15_000)
                page.wait_for_timeout(500)
                cancel = page.locator("button.imagegen-cancel")
                assert cancel.is_enabled() and generate.is_disabled()
                t0 = time.monotonic()
                cancel.click()
                page.wait_for_function(
                    "() => (document.querySelector('.imagegen-log') || {dataset: {}}).dataset.state === 'cancelled'"
                    " && !document.querySelector('button.imagegen-generate').disabled", timeout=5_000)
                assert time.monotonic() - t0 < 3.0       # a round trip through the kernel, not 20 s
                assert "Cancel button" in page.inner_text(".imagegen-log")
                assert page.locator(".imagegen-history-entry").count() == 1   # a cancelled run is not a result
                page.locator(".imagegen-form").screenshot(path=str(cancel_shot))
                ok = True
            finally:
                if not ok:
                    page.screenshot(path=str(ARTIFACTS / "widget-browser-failure.png"))
        finally:
            browser.close()
    errors = [c for c in console if c.startswith("error:") and "widget" in c.lower()]
    assert not errors, errors
    assert shot.stat().st_size > 10_000
