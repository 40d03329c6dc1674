"""The form's results outlive the kernel, and its messages follow its fields, in a real JupyterLab
(headless Chromium, the helpers of tests/test_browser.py).

One notebook: a cell starts the emulator, a cell shows an ImageGenForm, a third cell prints.
The test leaves the prompt empty and clicks Generate (the message names the prompt and the
prompt is marked), types a prompt (the message goes at once), clicks Generate, runs the third
cell (the form's cell must still get its output), puts the result back with "use as input" (the
upload button says "Add input images (1)"), clicks Generate again; then checks that the form and
each of its fields fit (no horizontal scrollbar, nothing clipped) at JupyterLab's default width,
that each of the two runs left an ordinary image output in the form's cell (outside the widget),
saves the notebook, reads the file with nbformat (two image outputs after the widget, and the
widget's text/plain does not count runs), restarts the kernel, reloads the page and finds both
images again in the cell while the widget itself is gone.

Screenshots (test-artifacts/): form-browser-message.png (the empty prompt refused),
form-browser-runs.png (the form and its cell's outputs after two runs),
form-browser-reopened.png (the notebook reopened after the restart), and
form-browser-failure.png when the test fails.
"""
from __future__ import annotations

import json
import time

import pytest

from test_browser import ARTIFACTS, _chromium_page, _jupyterlab, _notebook, _open_notebook

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

TOKEN = "sk-browser-form-token-0123456789"
SETUP_CELL = f"""\
import os, tempfile
from jupyter_imagegen.emulator import EmulatorThread
emu = EmulatorThread(token={TOKEN!r}, latency=0.3).start()
os.environ.update(IMAGE_AUTH_TOKEN={TOKEN!r}, IMAGE_API_TYPE="openai_images",
                  IMAGE_BASE_URL=emu.base_url_for("openai_images"), IMAGE_CACHE="0",
                  IMAGE_CACHE_DIR=tempfile.mkdtemp(prefix="imagegen-cache-"))
"""
FORM_CELL = """\
from jupyter_imagegen.widget import ImageGenForm
form = ImageGenForm(n=1)
form
"""
OTHER_CELL = 'print("another cell ran")'
FIRST_PROMPT = "a red kite over the dunes"
SECOND_PROMPT = "the same kite, at night"

#: the form's cell: images in its output area outside the widget, and whether the widget shows
_CELL_JS = r"""() => {
  const cells = [...document.querySelectorAll('.jp-Notebook .jp-Cell')];
  const cell = cells[1];
  const area = cell && cell.querySelector('.jp-OutputArea');
  if (!area) return {outside: [], widget: false, text: ''};
  const outside = [...area.querySelectorAll('img')].filter(i => !i.closest('.jupyter-widgets, .imagegen-form'))
      .map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt || '']);
  return {outside, widget: !!area.querySelector('.imagegen-form'), text: area.innerText};
}"""

#: elements of the form whose content is wider than their box (a scrollbar, or something clipped)
_OVERFLOW_JS = r"""() => {
  const form = document.querySelector('.imagegen-form');
  const out = [];
  const check = (el, what) => {
    if (el.scrollWidth > el.clientWidth + 1)
      out.push(`${what}: scrollWidth ${el.scrollWidth} > clientWidth ${el.clientWidth}`);
  };
  check(form, 'the form');
  const area = form.closest('.jp-OutputArea-output') || form.parentElement;
  check(area, 'the form\'s output');
  const right = form.getBoundingClientRect().right;
  for (const el of form.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0) continue;                       // not shown
    if (r.right > right + 1) out.push(`${el.tagName}.${el.className} ends at ${r.right} > the form's ${right}`);
    if (el.matches('button, .widget-upload')) check(el, `button "${el.innerText.trim()}"`);
    if (el.matches('.widget-inline-hbox, .widget-hbox, .widget-vbox')) check(el, el.className);
  }
  return {overflow: out, formWidth: form.clientWidth, areaWidth: area.clientWidth};
}"""


@pytest.fixture
def form_lab(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "form.ipynb").write_text(json.dumps(_notebook([SETUP_CELL, FORM_CELL, OTHER_CELL]), indent=1))
    with _jupyterlab(tmp_path, root) as server:
        yield server


def _wait_idle(page, timeout=30_000):
    page.wait_for_function(
        "() => { const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;"
        "        return k && k.status === 'idle'; }", timeout=timeout)


def _generate(page, prompt: str, runs_before: int) -> None:
    """Type `prompt`, click Generate, wait until the run is in the history and Generate is back."""
    page.locator(".imagegen-prompt textarea").fill(prompt)
    page.wait_for_timeout(300)                      # the kernel has the prompt (the Textarea syncs on input)
    page.locator("button.imagegen-generate").click()
    page.wait_for_function(
        f"() => document.querySelectorAll('.imagegen-history-entry').length === {runs_before + 1}"
        "  && !document.querySelector('button.imagegen-generate').disabled", timeout=30_000)


def _cell_images(page, want: int, timeout: float = 15.0) -> dict:
    """The form's cell once it shows `want` rendered images outside the widget (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        state = page.evaluate(_CELL_JS)
        rendered = [i for i in state["outside"] if i[0] and i[1] > 0 and i[2] > 0]
        if len(rendered) >= want or time.monotonic() > deadline:
            return state
        page.wait_for_timeout(200)


def test_form_results_survive_a_restart_and_messages_follow_the_fields(form_lab):
    import nbformat

    lab = form_lab
    ARTIFACTS.mkdir(exist_ok=True)
    shots = {k: ARTIFACTS / f"form-browser-{k}.png" for k in ("message", "runs", "reopened", "failure")}
    ok = False
    with _chromium_page() as (page, console):
        try:
            _open_notebook(page, lab, "form.ipynb")
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_selector(".imagegen-prompt textarea", timeout=45_000)
            _wait_idle(page)
            form = page.locator(".imagegen-form")

            # an empty prompt: refused, the message names it and the field is marked ...
            page.locator("button.imagegen-generate").click()
            page.wait_for_function("() => /prompt is empty/.test((document.querySelector("
                                   "'.imagegen-form-message') || {}).innerText || '')", timeout=10_000)
            assert page.locator(".imagegen-prompt.imagegen-invalid").count() == 1
            form.screenshot(path=str(shots["message"]))
            # ... and the message goes as soon as the prompt has text (no second click)
            page.locator(".imagegen-prompt textarea").fill(FIRST_PROMPT)
            page.wait_for_function("() => !document.querySelector('.imagegen-form-message')"
                                   " && !document.querySelector('.imagegen-invalid')", timeout=5_000)

            # run 1, then another cell runs: the form's cell still gets the next run's output
            _generate(page, FIRST_PROMPT, 0)
            state = _cell_images(page, 1)
            assert len(state["outside"]) == 1, state
            page.evaluate("() => { const nb = window.jupyterapp.shell.currentWidget.content;"
                          "        nb.activeCellIndex = 2; }")
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-cell')")
            page.wait_for_function("() => /another cell ran/.test(document.querySelectorAll("
                                   "'.jp-Notebook .jp-Cell')[2].innerText)", timeout=15_000)

            # "use as input": the upload button counts the image queued that way
            upload = page.locator(".imagegen-upload")
            assert upload.inner_text().strip().endswith("(0)"), upload.inner_text()
            page.locator(".imagegen-history-entry button.imagegen-use-as-input").first.click()
            page.wait_for_function("() => /\\(1\\)\\s*$/.test(document.querySelector('.imagegen-upload').innerText)",
                                   timeout=5_000)
            assert page.locator(".imagegen-input img").count() == 1

            # run 2 (an edit of run 1's image)
            _generate(page, SECOND_PROMPT, 1)
            state = _cell_images(page, 2)
            rendered = [i for i in state["outside"] if i[0] and i[1] > 0]
            assert len(rendered) == 2, f"the form's cell shows {state['outside']} outside the widget"
            assert state["widget"]
            # the third cell has no image: the outputs went to the form's cell only
            assert page.locator(".jp-Notebook .jp-Cell").nth(2).locator("img").count() == 0

            # at JupyterLab's default width: no horizontal scrollbar, nothing sticks out
            layout = page.evaluate(_OVERFLOW_JS)
            assert not layout["overflow"], layout
            # the screenshot: the end of the form (its history) and the cell's own image outputs
            page.evaluate("() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')[1].querySelectorAll("
                          "'.jp-OutputArea-child')].at(-2).scrollIntoView({block: 'start'})")
            page.wait_for_timeout(300)
            page.screenshot(path=str(shots["runs"]))

            # save; the file has both runs' images as ordinary outputs of the form's cell
            page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
            page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty",
                                   timeout=15_000)
            nb = nbformat.read(str(lab["root"] / "form.ipynb"), as_version=4)
            outs = nb.cells[1].outputs
            widget_outs = [o for o in outs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
            assert len(widget_outs) == 1, [list(o.get("data", {})) for o in outs]
            assert "0 results" not in widget_outs[0]["data"]["text/plain"]
            images = [o for o in outs if o.get("output_type") == "display_data"
                      and ({"image/png", "image/jpeg"} & set(o["data"]) or "<img" in o["data"].get("text/html", ""))]
            assert len(images) == 2, [list(o.get("data", {})) for o in outs]
            assert all({"image/png", "image/jpeg"} & set(o["data"]) for o in images)
            assert outs.index(widget_outs[0]) < outs.index(images[0])      # below the form
            assert FIRST_PROMPT in json.dumps(images[0]["data"]) and SECOND_PROMPT in json.dumps(images[1]["data"])
            assert TOKEN not in json.dumps(outs)                # (the setup cell's source has it)
            assert not nb.cells[2].outputs or all("image/png" not in o.get("data", {}) for o in nb.cells[2].outputs)

            # restart the kernel, then reopen the notebook from disk: the images are still there
            page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart()")
            _wait_idle(page, timeout=45_000)
            state = _cell_images(page, 2)
            assert len([i for i in state["outside"] if i[1] > 0]) == 2, state
            page.reload(wait_until="domcontentloaded")
            _open_notebook(page, lab, "form.ipynb")
            state = _cell_images(page, 2, timeout=20.0)
            rendered = [i for i in state["outside"] if i[0] and i[1] > 0 and i[2] > 0]
            assert len(rendered) == 2, state
            assert not state["widget"]                         # the form itself needs its kernel
            page.locator(".jp-Notebook .jp-Cell").nth(1).scroll_into_view_if_needed()
            page.screenshot(path=str(shots["reopened"]))
            ok = True
        finally:
            if not ok:
                page.screenshot(path=str(shots["failure"]))
    errors = [c for c in console if c.startswith("error:") and "imagegen" in c.lower()]
    assert not errors, errors
