"""What the cell outputs look like in JupyterLab 4 (issue 14, points 6 and 7), in headless Chromium.

One JupyterLab server (127.0.0.1, token auth) and one browser page for the whole module, serving a
copy of notebooks/ (against the built-in emulator: IMAGEGEN_EMULATOR=1) and outputs.ipynb, a
notebook this module writes (its own emulator, latency 0.2 s).

* test_run_all_every_notebook: every notebook of notebooks/ is opened in a tab and run with the
  menu Run > Run All Cells (all four at once, each on its own default python3 kernel, ipykernel 7;
  tests/test_browser.py also runs the quickstart on ipykernel 6). Every code cell gets an
  execution count, the kernels end idle, no output is an error (an `error` output, a traceback,
  an `...Error` line on stderr: each stops Run All in JupyterLab, whatever the cell's tags), and
  every %imagegen cell shows its images (-n N, N per --compare value), or its error box for the
  cells that show an API error on purpose.
* test_text_contrast_light_and_dark: the WCAG 2.x contrast ratio of every text in `.imagegen-log`,
  `.imagegen-error`, figcaptions and `.imagegen-form`, computed from the rendered colours
  (getComputedStyle colour with its alpha, the opacity of every ancestor, the backgrounds of
  every ancestor composited from the page's root down), in JupyterLab's light and dark themes;
  each must be >= 4.5 (3 for large text). The same on an untrusted copy of the executed notebook
  (JupyterLab's sanitizer drops some style declarations, e.g. colours given with var() or
  color-mix(): those are listed in test-artifacts/outputs-contrast.txt, with every measurement).
  Screenshots: test-artifacts/outputs-{light,dark}-log-error.png (a cell with a retry, a failure
  and its error box), outputs-{light,dark}-gallery4.png (an n=4 gallery), outputs-form-{light,dark}.png.
* test_gallery_layout: the figures of an n=4 gallery lay out as 2x2, those of an n=9 gallery as 3x3.
* test_saved_path_is_a_link: a `--save DIR` caption shows the saved path as a link that opens
  the file in JupyterLab (clicking it opens a tab on that file).

Run: python -m pytest -q tests/test_browser_outputs.py -x
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from test_browser import ARTIFACTS, ASYNCIO_ERRORS, ROOT, _chromium_page, _jupyterlab, _menu, _notebook

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

NOTEBOOKS = ("quickstart", "iterate", "reliability", "widget")
#: all four notebooks run at once; each alone takes 10-25 s against the emulator
RUN_ALL_DEADLINE = 100.0
STUCK_AFTER = 15.0
#: WCAG 2.x AA: normal text, large text (>= 24 px, or >= 18.66 px bold)
AA_NORMAL, AA_LARGE = 4.5, 3.0
THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}
EMU_TOKEN = "sk-browser-outputs-token-0123456789"
OUTPUTS_NB = "outputs.ipynb"
UNTRUSTED_NB = "outputs-untrusted.ipynb"

OUTPUT_CELLS = [
    # 0: the emulator (its own, so the faults below are this notebook's)
    f"""\
import os, tempfile
from jupyter_imagegen.emulator import EmulatorThread
emu = EmulatorThread(token={EMU_TOKEN!r}, latency=0.2).start()
os.environ.update(IMAGE_AUTH_TOKEN={EMU_TOKEN!r}, IMAGE_API_TYPE="openai_images",
                  IMAGE_BASE_URL=emu.base_url_for("openai_images"), IMAGE_CACHE="0",
                  IMAGE_CACHE_DIR=tempfile.mkdtemp(prefix="imagegen-cache-"))
%load_ext jupyter_imagegen""",
    # 1: a retry, then a failure with its error box
    "%%imagegen --fault 429:retry_after=1 --fault 400\na lighthouse at dusk, seen from the beach",
    # 2: a retry that succeeds
    "%%imagegen --fault 429:retry_after=1\na paper boat on a pond, watercolour",
    # 3, 4: galleries
    "%%imagegen -n 4\na flat vector logo of a hedgehog",
    "%%imagegen -n 9\na tiny robot watering a plant",
    # 5: saved next to the notebook (a relative folder: the kernel runs in the notebook's folder)
    "%%imagegen --save saved-images\na heron standing in the reeds",
    # 6: the form, with a validation message (Generate with no prompt)
    """\
from jupyter_imagegen.widget import ImageGenForm
form = ImageGenForm(n=1)
form.generate()
form""",
]
CELL_LOG_ERROR, CELL_RETRY, CELL_N4, CELL_N9, CELL_SAVE, CELL_FORM = 1, 2, 3, 4, 5, 6


# ---------------------------------------------------------------------------------------------
# the server and the page (one of each for the module)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def outputs_lab(tmp_path_factory):
    """JupyterLab serving a copy of notebooks/ and outputs.ipynb; no IMAGE_*/IMAGEGEN_* setting of
    the developer; IMAGEGEN_EMULATOR=1 (the notebooks start their emulator), IMAGEGEN_OUT, the
    cache and TMPDIR in the test's temp dir."""
    tmp_path = tmp_path_factory.mktemp("outputs")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(ROOT / "notebooks", root / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "imagegen-out"))
    (root / OUTPUTS_NB).write_text(json.dumps(_notebook(OUTPUT_CELLS), indent=1), encoding="utf-8")
    out, cache, tmp = tmp_path / "out", tmp_path / "cache", tmp_path / "tmp"
    for d in (out, cache, tmp):
        d.mkdir()
    env = {k: None for k in os.environ if k.startswith("IMAGEGEN_")}
    env.update(IMAGEGEN_EMULATOR="1", IMAGEGEN_OUT=str(out), IMAGE_CACHE_DIR=str(cache), TMPDIR=str(tmp))
    with _jupyterlab(tmp_path, root, env_updates=env) as server:
        server.update(out=out)
        yield server


@pytest.fixture(scope="module")
def lab_page(outputs_lab):
    """One headless Chromium page with JupyterLab open (no document yet); yields (page, console)."""
    lab = outputs_lab
    with _chromium_page(viewport={"width": 1280, "height": 1400}) as (page, console):
        page.goto(f"{lab['base']}/lab?token={lab['token']}", wait_until="domcontentloaded")
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=45_000)
        page.wait_for_function("() => window.jupyterapp.started !== undefined", timeout=45_000)
        page.evaluate("() => window.jupyterapp.started")
        page.wait_for_selector(".jp-LabShell", timeout=45_000)
        yield page, console


#: the notebook panel of `path` (relative to the server's root), from the main area
_PANEL_JS = """(path) => Array.from(window.jupyterapp.shell.widgets('main'))
                    .find(w => w.context && w.context.path === path)"""


def _open(page, path: str) -> None:
    """Open `path` in a tab of the page (activating it) and wait until its kernel is idle."""
    page.evaluate("async (path) => { await window.jupyterapp.commands.execute('docmanager:open', {path}); }", path)
    page.wait_for_function(
        f"""(path) => {{ const w = ({_PANEL_JS})(path);
               const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
               return w && w.content && w.content.widgets.length > 0 && k && k.status === 'idle'; }}""",
        arg=path, timeout=60_000)


def _activate(page, path: str) -> None:
    page.evaluate(f"(path) => window.jupyterapp.shell.activateById(({_PANEL_JS})(path).id)", path)
    page.wait_for_function(
        "(path) => { const w = window.jupyterapp.shell.currentWidget; return w && w.context && w.context.path === path; }",
        arg=path)


def _run_all(page, path: str) -> None:
    """What a user does: the notebook's tab in front, then Run > Run All Cells."""
    _activate(page, path)
    _menu(page, "Run", "Run All Cells")


#: the state of every code cell of the notebook at `path`
_CELLS_JS = f"""(path) => {{
  const w = ({_PANEL_JS})(path);
  const s = w && w.sessionContext && w.sessionContext.session;
  const cells = [];
  w.content.widgets.forEach((c, i) => {{
    if (c.model.type !== 'code') return;
    const prompt = c.node.querySelector('.jp-InputArea-prompt');
    const outputs = c.model.outputs.toJSON();
    const text = o => Array.isArray(o.text) ? o.text.join('') : (o.text || '');
    const rendered = im => im.complete && im.naturalWidth > 0 && im.naturalHeight > 0;
    // images: the most figures one output shows (the live view and a later output may show the
    // same gallery), or the number of plain image outputs if there are more of those
    const areas = [...c.node.querySelectorAll('.jp-OutputArea-output')];
    const figures = areas.map(a => [...a.querySelectorAll('.imagegen-figure img, .imagegen-compare img')]);
    const best = figures.reduce((b, f) => f.length > b.length ? f : b, []);
    const plain = areas.filter(a => a.classList.contains('jp-RenderedImage')
                                    || a.querySelector(':scope > .jp-RenderedImage'))
                       .map(a => a.querySelector('img')).filter(Boolean);
    const imgs = plain.length > best.length ? plain : best;
    const dom = (c.node.querySelector('.jp-OutputArea') || {{textContent: ''}}).textContent;
    cells.push({{index: i, prompt: prompt ? prompt.textContent.trim() : '',
                source: c.model.sharedModel.getSource(), tags: c.model.getMetadata('tags') || [],
                images: imgs.length, rendered: imgs.filter(rendered).length,
                errorBox: !!c.node.querySelector('.jp-OutputArea .imagegen-error'),
                errorOutputs: outputs.filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue),
                stderrErrors: outputs.filter(o => o.output_type === 'stream' && o.name === 'stderr'
                                           && /^\\w*(Error|Exception)\\b/m.test(text(o))).map(o => text(o).slice(0, 300)),
                traceback: /Traceback \\(most recent call last\\)/.test(dom),
                text: dom.slice(0, 2000)}});
  }});
  return {{path, kernel: s && s.kernel ? s.kernel.status : 'none', cells}};
}}"""

_MAGIC = re.compile(r"\s*%%?imagegen\b(?!_)")
#: cells that show an API error on purpose (error box, no image): a 4xx other than 408/409/429,
#: no image in the answer, more 503s than retries (2 by default)
_API_ERROR = re.compile(r"--fault\s+((?!408|409|429)4\d\d|no_image)\b")
#: a request refused before it is sent (a size openai_images cannot make): a message, no image
_REFUSED = re.compile(r"--api openai_images --size 800x600")
#: (notebook, a regex on the first line) -> (images, error box): the fan-out with failed images
_PARTIAL = {("reliability", r"-n 4 --retries 0\b"): 2}


def _expectation(notebook: str, source: str):
    """(images, what else must show: "error box", "message" or None) of a %imagegen cell."""
    first = source.splitlines()[0]
    for (nb, pattern), images in _PARTIAL.items():
        if nb == notebook and re.search(pattern, first):
            return images, "error box"
    if _API_ERROR.search(first):
        return 0, "error box"
    m = re.search(r"--retries\s+(\d+)", first)
    if first.count("--fault 503") > (int(m.group(1)) if m else 2):
        return 0, "error box"
    if _REFUSED.search(first):
        return 0, "message"
    m = re.search(r"--compare\s+\w+=(\S+)", first)
    if m:   # one image per value and per prompt (a line "---" separates prompts)
        prompts = 1 + sum(1 for line in source.splitlines()[1:] if line.strip() == "---")
        return len(m.group(1).split(",")) * prompts, None
    m = re.search(r"(?:^|\s)-n\s+(\d+)", first)
    return (int(m.group(1)) if m else 1), None


def _describe(state: dict) -> str:
    rows = []
    for c in state["cells"]:
        first = c["source"].splitlines()[0][:60] if c["source"] else ""
        extra = f" images={c['images']}" if c["images"] else ""
        extra += " ERROR" if c["errorOutputs"] or c["stderrErrors"] or c["traceback"] else ""
        if _MAGIC.match(c["source"]) and not c["images"]:
            extra += f" shows {' '.join(c['text'].split())[:100]!r}"
        rows.append(f"  cell {c['index']:>2} {c['prompt'] or '[?]':>6} {first}{extra}")
    return f"{state['path']}: kernel {state['kernel']}\n" + "\n".join(rows)


def _done(state: dict) -> bool:
    return state["kernel"] == "idle" and all(re.fullmatch(r"\[\d+\]:", c["prompt"]) for c in state["cells"])


def _wait_all(page, paths, until: float) -> dict:
    """Poll until every notebook of `paths` is done (idle kernel, every code cell numbered), one
    is stuck (its kernel idle for STUCK_AFTER s with cells at [*] or never run), or `until`.
    Returns {path: last state}."""
    idle_since = {}
    while True:
        states = {p: page.evaluate(_CELLS_JS, p) for p in paths}
        now = time.monotonic()
        if all(_done(s) for s in states.values()):
            return states
        for p, s in states.items():
            if s["kernel"] == "idle" and not _done(s):
                idle_since.setdefault(p, now)
            else:
                idle_since.pop(p, None)
        if any(now - t > STUCK_AFTER for t in idle_since.values()) or now > until \
                or any(s["kernel"] in ("dead", "none") for s in states.values()):
            return states
        page.wait_for_timeout(300)


# ---------------------------------------------------------------------------------------------
# point 6: Run All completes on every notebook
# ---------------------------------------------------------------------------------------------
def test_run_all_every_notebook(outputs_lab, lab_page):
    page, console = lab_page
    paths = [f"notebooks/{name}.ipynb" for name in NOTEBOOKS]
    assert sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")) == sorted(f"{n}.ipynb" for n in NOTEBOOKS), \
        "notebooks/ changed: update NOTEBOOKS"
    ARTIFACTS.mkdir(exist_ok=True)
    t0 = time.monotonic()
    for p in paths:
        _open(page, p)
    for p in paths:
        _run_all(page, p)
    states = _wait_all(page, paths, time.monotonic() + RUN_ALL_DEADLINE)
    elapsed = time.monotonic() - t0
    summary = "\n".join(_describe(s) for s in states.values())
    print(f"Run All of {len(paths)} notebooks: {elapsed:.0f} s\n{summary}")
    for p in paths:   # the end of each notebook, for a look
        _activate(page, p)
        page.evaluate(f"(path) => {{ const w = ({_PANEL_JS})(path); w.content.activeCellIndex = w.content.widgets.length - 1;"
                      " w.content.scrollToItem(w.content.widgets.length - 1); }", p)
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / f"run-all-{Path(p).stem}.png"))

    problems = []
    for p, s in states.items():
        nb = Path(p).stem
        if s["kernel"] != "idle":
            problems.append(f"{nb}: the kernel is {s['kernel']}")
        not_run = [c for c in s["cells"] if not re.fullmatch(r"\[\d+\]:", c["prompt"])]
        if not_run:
            problems.append(f"{nb}: {len(not_run)} code cells have no execution count, from cell "
                            f"{not_run[0]['index']} ({not_run[0]['source'].splitlines()[0][:60]!r}) on")
        for c in s["cells"]:
            first = c["source"].splitlines()[0][:70] if c["source"] else ""
            errors = c["errorOutputs"] + c["stderrErrors"] + (["a traceback in the page"] if c["traceback"] else [])
            if errors:
                problems.append(f"{nb} cell {c['index']} ({first!r}) shows an error that stops Run All: "
                                f"{errors[0][:300]!r}")
            for e in ASYNCIO_ERRORS:
                if e in c["text"]:
                    problems.append(f"{nb} cell {c['index']}: asyncio error {e!r}")
            if not _MAGIC.match(c["source"]) or not re.fullmatch(r"\[\d+\]:", c["prompt"]):
                continue
            images, extra = _expectation(nb, c["source"])
            if c["images"] != images or c["rendered"] != images:
                problems.append(f"{nb} cell {c['index']} ({first!r}) shows {c['rendered']} rendered of "
                                f"{c['images']} images, want {images}")
            if extra == "error box" and not c["errorBox"]:
                problems.append(f"{nb} cell {c['index']} ({first!r}) shows no error box")
            if extra == "message" and not c["text"].strip():
                problems.append(f"{nb} cell {c['index']} ({first!r}) shows nothing (it must say why no image)")
    # the form notebook: the form is there with its results
    form_imgs = page.evaluate(f"""() => {{ const w = ({_PANEL_JS})('notebooks/widget.ipynb');
        return [...w.node.querySelectorAll('.imagegen-form .imagegen-history-entry img')]
               .filter(i => i.complete && i.naturalWidth > 0).length; }}""")
    if not form_imgs:
        problems.append("widget: the form shows no result in its history")
    log_text = outputs_lab["log"].read_text(errors="replace")
    problems += [f"server log: asyncio error {e!r}" for e in ASYNCIO_ERRORS if e in log_text]
    magic_cells = sum(1 for s in states.values() for c in s["cells"] if _MAGIC.match(c["source"]))
    assert magic_cells >= 30, f"only {magic_cells} %imagegen cells in notebooks/\n{summary}"
    assert not problems, "\n".join(problems) + f"\n{summary}"
    page_errors = [c for c in console if c.startswith("error:") and "imagegen" in c.lower()]
    assert not page_errors, page_errors
    assert elapsed < RUN_ALL_DEADLINE, f"Run All took {elapsed:.0f} s"


# ---------------------------------------------------------------------------------------------
# point 7: contrast, screenshots, gallery layout, saved paths as links (outputs.ipynb)
# ---------------------------------------------------------------------------------------------
#: the contrast of every text in the page's imagegen outputs: for each element with text of its
#: own, the colour of a text pixel and of the background beside it, composited from the root of
#: the page down (every ancestor's background colour and opacity, the text colour's alpha)
_CONTRAST_JS = r"""(scope) => {
  const canvas = document.createElement('canvas'); canvas.width = canvas.height = 1;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const cache = new Map();
  const rgba = css => {          // any CSS colour the browser computed -> [r, g, b, a] (0-1)
    if (cache.has(css)) return cache.get(css);
    let v;
    const m = /^rgba?\(([^)]*)\)$/.exec(css);
    if (m) {
      const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(parseFloat);
      v = [p[0] / 255, p[1] / 255, p[2] / 255, p.length > 3 ? p[3] : 1];
    } else {
      const s = /^color\(srgb ([\d.e-]+) ([\d.e-]+) ([\d.e-]+)(?: \/ ([\d.e-]+))?\)$/.exec(css);
      if (s) v = [+s[1], +s[2], +s[3], s[4] === undefined ? 1 : +s[4]];
      else {                      // anything else: let a canvas convert it
        ctx.clearRect(0, 0, 1, 1); ctx.fillStyle = '#000'; ctx.fillStyle = css; ctx.fillRect(0, 0, 1, 1);
        const d = ctx.getImageData(0, 0, 1, 1).data;
        v = [d[0] / 255, d[1] / 255, d[2] / 255, d[3] / 255];
      }
    }
    cache.set(css, v); return v;
  };
  const over = (top, under) => [0, 1, 2].map(i => top[i] * top[3] + under[i] * (1 - top[3])).concat([1]);
  const lerp = (a, b, t) => [0, 1, 2].map(i => a[i] + (b[i] - a[i]) * t).concat([1]);
  // the colour at a pixel of `el`'s text (withText) or of its background, over the canvas (white)
  const pixel = (chain, k, under, text) => {
    const cs = getComputedStyle(chain[k]);
    let inner = over(rgba(cs.backgroundColor), under);
    inner = k === chain.length - 1 ? (text ? over(text, inner) : inner) : pixel(chain, k + 1, inner, text);
    return lerp(under, inner, parseFloat(cs.opacity));   // a group with opacity, over what is below
  };
  const lum = c => { const f = x => x <= 0.04045 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4);
                     return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const hex = c => '#' + c.slice(0, 3).map(x => Math.round(x * 255).toString(16).padStart(2, '0')).join('');
  const root = scope ? document.querySelector(scope) : document;
  const containers = [['log', '.imagegen-log'], ['error', '.imagegen-error'], ['caption', 'figcaption'],
                      ['form', '.imagegen-form']];
  const seen = new Set(), out = [];
  for (const [kind, sel] of containers) {
    for (const box of root.querySelectorAll(sel)) {
      for (const el of [box, ...box.querySelectorAll('*')]) {
        if (seen.has(el)) continue;
        const own = [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
        const value = (el.tagName === 'INPUT' || el.tagName === 'TEXTAREA') && el.type !== 'file' ? el.value.trim() : '';
        if (!own && !value) continue;
        if (!el.getClientRects().length) continue;
        const cs = getComputedStyle(el);
        if (cs.visibility !== 'visible' || cs.display === 'none') continue;
        if (el.closest(':disabled, [disabled]')) continue;   // WCAG 1.4.3: inactive controls are exempt
        seen.add(el);
        const chain = []; for (let n = el; n; n = n.parentElement) chain.unshift(n);
        const white = [1, 1, 1, 1];
        const fg = pixel(chain, 0, white, rgba(cs.color)), bg = pixel(chain, 0, white, null);
        const size = parseFloat(cs.fontSize), bold = parseInt(cs.fontWeight) >= 700;
        const large = size >= 24 || (bold && size >= 18.66);
        let opacity = 1; for (const n of chain) opacity *= parseFloat(getComputedStyle(n).opacity);
        out.push({kind, text: (own || value).slice(0, 50), tag: el.tagName.toLowerCase(),
                  cls: (el.className && el.className.baseVal === undefined ? el.className : '').slice(0, 60),
                  style: (el.getAttribute('style') || '').slice(0, 120), color: cs.color, opacity,
                  fg: hex(fg), bg: hex(bg), ratio: Math.round(ratio(fg, bg) * 100) / 100,
                  need: large ? 3.0 : 4.5, size});
      }
    }
  }
  return out;
}"""


def _render_all(page, path: str) -> None:
    """Scroll through the notebook at `path` so every cell is rendered (JupyterLab renders the
    cells of a long notebook when they come into view), then back to the top."""
    page.evaluate(f"""async (path) => {{
        const nb = ({_PANEL_JS})(path).content;
        const frame = () => new Promise(r => requestAnimationFrame(r));
        for (let i = 0; i < nb.widgets.length; i++) {{ await nb.scrollToItem(i, 'start'); await frame(); await frame(); }}
        await nb.scrollToItem(0, 'start');
        for (let k = 0; k < 5; k++) await frame();
    }}""", path)


def _set_theme(page, name: str) -> None:
    page.evaluate("async (theme) => { await window.jupyterapp.commands.execute('apputils:change-theme', {theme}); }",
                  THEMES[name])
    page.wait_for_function("(theme) => document.body.dataset.jpThemeName === theme", arg=THEMES[name], timeout=20_000)
    page.wait_for_timeout(600)   # the theme's CSS applied, a few frames


def _cell_locator(page, path: str, index: int):
    """A locator of cell `index` of the notebook at `path` (its node gets a data attribute)."""
    mark = f"{path}:{index}"
    page.evaluate(f"([path, index, mark]) => {{ ({_PANEL_JS})(path).content.widgets[index].node"
                  f".dataset.imagegenTest = mark; }}", [path, index, mark])
    return page.locator(f"[data-imagegen-test='{mark}']")


def _panel_id(page, path: str) -> str:
    return page.evaluate(f"(path) => ({_PANEL_JS})(path).id", path)


def _shot(page, path: str, index: int, file: Path) -> None:
    loc = _cell_locator(page, path, index)
    loc.scroll_into_view_if_needed()
    page.wait_for_timeout(200)
    loc.screenshot(path=str(file))


def _measure(page, path: str):
    return page.evaluate(_CONTRAST_JS, f".jp-NotebookPanel[id='{_panel_id(page, path)}']")


#: every style declaration of the imagegen outputs of a notebook: as its outputs hold them (the
#: HTML of the model) and as the page shows them (after JupyterLab's sanitizer, for untrusted ones)
_DECLARATIONS_JS = f"""(path) => {{
  const w = ({_PANEL_JS})(path);
  const norm = style => (style || '').split(';').map(d => d.trim()).filter(d => d.includes(':'))
      .map(d => {{ const i = d.indexOf(':'); return d.slice(0, i).trim().toLowerCase() + ': '
                                                 + d.slice(i + 1).trim().replace(/\\s+/g, ' '); }});
  const source = new Set(), shown = new Set();
  const html = w.content.widgets.flatMap(c => c.model.type === 'code' ? c.model.outputs.toJSON() : [])
      .map(o => (o.data || {{}})['text/html']).filter(Boolean).map(h => Array.isArray(h) ? h.join('') : h);
  for (const h of html) {{
    const doc = new DOMParser().parseFromString(h, 'text/html');
    doc.querySelectorAll('[style]').forEach(e => norm(e.getAttribute('style')).forEach(d => source.add(d)));
  }}
  w.node.querySelectorAll('.jp-OutputArea [style]').forEach(
      e => norm(e.getAttribute('style')).forEach(d => shown.add(d)));
  return {{source: [...source], shown: [...shown]}};
}}"""


@pytest.fixture(scope="module")
def outputs_run(outputs_lab, lab_page):
    """outputs.ipynb run (Run All) in the module's page, in the light theme; yields the page."""
    page, _ = lab_page
    # close what an earlier test opened, without the "save your changes?" dialog
    page.evaluate("""() => Array.from(window.jupyterapp.shell.widgets('main')).forEach(w => {
        if (w.context && w.context.model) w.context.model.dirty = false;
        w.close(); })""")
    _open(page, OUTPUTS_NB)
    _run_all(page, OUTPUTS_NB)
    state = _wait_all(page, [OUTPUTS_NB], time.monotonic() + 60)
    assert _done(state[OUTPUTS_NB]), _describe(state[OUTPUTS_NB])
    # the form's message comes from a validation in the kernel: wait for the view to show it
    page.wait_for_function("() => !!document.querySelector('.imagegen-form .imagegen-form-message')", timeout=15_000)
    _render_all(page, OUTPUTS_NB)
    page.wait_for_function("() => [...document.querySelectorAll('.imagegen-gallery img')].every(i => i.complete)")
    yield page


def _contrast_failures(rows) -> list:
    return [r for r in rows if r["ratio"] < r["need"]]


def _grouped(rows) -> list:
    """Rows of the same kind, tag and colours as one (with how many and one text)."""
    groups = {}
    for r in rows:
        key = (r["kind"], r["tag"], r["fg"], r["bg"], r["ratio"], r["need"])
        groups.setdefault(key, dict(r, count=0))["count"] += 1
    return sorted(groups.values(), key=lambda r: (r["kind"], r["ratio"]))


def _table(rows) -> str:
    return "\n".join(f"  {r['ratio']:>5.2f} {'ok ' if r['ratio'] >= r['need'] else 'LOW'} {r['kind']:<7} "
                     f"<{r['tag']}> {r['fg']} on {r['bg']} (color {r['color']}, opacity {r['opacity']:.2f}) "
                     f"x{r['count']}: {r['text']!r}" for r in _grouped(rows))


def test_text_contrast_light_and_dark(outputs_lab, outputs_run):
    page = outputs_run
    ARTIFACTS.mkdir(exist_ok=True)
    report, failures = [], []
    for theme in ("light", "dark"):
        _set_theme(page, theme)
        rows = _measure(page, OUTPUTS_NB)
        kinds = {r["kind"] for r in rows}
        assert {"log", "error", "caption", "form"} <= kinds, f"measured only {sorted(kinds)}"
        report.append(f"{theme}, trusted outputs ({len(rows)} texts):\n{_table(rows)}")
        failures += [(theme, "trusted", r) for r in _contrast_failures(rows)]
        _shot(page, OUTPUTS_NB, CELL_LOG_ERROR, ARTIFACTS / f"outputs-{theme}-log-error.png")
        _shot(page, OUTPUTS_NB, CELL_RETRY, ARTIFACTS / f"outputs-{theme}-retry.png")
        _shot(page, OUTPUTS_NB, CELL_N4, ARTIFACTS / f"outputs-{theme}-gallery4.png")
        _shot(page, OUTPUTS_NB, CELL_FORM, ARTIFACTS / f"outputs-{theme}-form.png")

    # the same notebook reopened untrusted: JupyterLab's sanitizer filters the style attributes
    page.evaluate("async () => { await window.jupyterapp.commands.execute('docmanager:save'); }")
    root = outputs_lab["root"]
    deadline = time.monotonic() + 15
    while True:
        nb = json.loads((root / OUTPUTS_NB).read_text(encoding="utf-8"))
        if any(c.get("outputs") for c in nb["cells"]) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    nb["metadata"]["imagegen_test"] = "a copy: its signature does not match, so JupyterLab does not trust it"
    (root / UNTRUSTED_NB).write_text(json.dumps(nb, indent=1), encoding="utf-8")
    page.evaluate("async (path) => { await window.jupyterapp.commands.execute('docmanager:open', {path}); }", UNTRUSTED_NB)
    page.wait_for_function(f"(path) => {{ const w = ({_PANEL_JS})(path); return w && w.node.querySelector('.imagegen-log'); }}",
                           arg=UNTRUSTED_NB, timeout=30_000)
    trusted = page.evaluate(f"(path) => ({_PANEL_JS})(path).content.model.cells.get(1).trusted", UNTRUSTED_NB)
    _render_all(page, UNTRUSTED_NB)
    decl = page.evaluate(_DECLARATIONS_JS, UNTRUSTED_NB)
    dropped = sorted(set(decl["source"]) - set(decl["shown"]))
    report.append(f"untrusted copy (cell trusted={trusted}): {len(decl['source'])} distinct style declarations in the "
                  f"outputs, {len(dropped)} dropped by the sanitizer:\n" + "\n".join(f"  {d}" for d in dropped))
    for theme in ("light", "dark"):
        _set_theme(page, theme)
        rows = _measure(page, UNTRUSTED_NB)
        report.append(f"{theme}, untrusted outputs ({len(rows)} texts):\n{_table(rows)}")
        failures += [(theme, "untrusted", r) for r in _contrast_failures(rows)]
        _shot(page, UNTRUSTED_NB, CELL_LOG_ERROR, ARTIFACTS / f"outputs-{theme}-untrusted-log-error.png")
        _shot(page, UNTRUSTED_NB, CELL_N4, ARTIFACTS / f"outputs-{theme}-untrusted-gallery4.png")
    _set_theme(page, "light")
    page.evaluate(f"(path) => ({_PANEL_JS})(path).close()", UNTRUSTED_NB)
    _activate(page, OUTPUTS_NB)
    (ARTIFACTS / "outputs-contrast.txt").write_text("\n\n".join(report) + "\n", encoding="utf-8")
    print("\n\n".join(report))
    assert trusted is False, "the copy should be untrusted"
    cases = {}
    for t, w, r in failures:
        key = f"{t:<5} {w:<9} {r['ratio']:.2f} < {r['need']} {r['kind']} <{r['tag']}> {r['fg']} on {r['bg']}"
        cases.setdefault(key, []).append(r["text"][:40])
    lines = [f"  {k} x{len(v)}: {v[0]!r}" for k, v in sorted(cases.items())]
    assert not failures, f"{len(failures)} texts below WCAG AA (distinct cases below):\n" + "\n".join(lines)


#: the bounding boxes of the figures of each gallery of a cell
_FIGURES_JS = """([id, index]) => {
  const cell = Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.id === id).content.widgets[index].node;
  return [...cell.querySelectorAll('.imagegen-gallery')].map(g => [...g.querySelectorAll(':scope > figure, :scope figure')]
      .map(f => { const r = f.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }));
}"""


def _grid(boxes) -> list:
    """The number of figures per row (figures whose tops are within 2 px are one row)."""
    rows = []
    for left, top, w, h in sorted(boxes, key=lambda b: (round(b[1]), b[0])):
        if rows and abs(rows[-1][0] - top) < 2:
            rows[-1][1] += 1
        else:
            rows.append([top, 1])
    return [n for _, n in rows]


def test_gallery_layout(outputs_run):
    page = outputs_run
    pid = _panel_id(page, OUTPUTS_NB)
    got = {}
    for n, index in ((4, CELL_N4), (9, CELL_N9)):
        _cell_locator(page, OUTPUTS_NB, index).scroll_into_view_if_needed()
        galleries = page.evaluate(_FIGURES_JS, [pid, index])
        gallery = [g for g in galleries if len(g) == n]
        assert gallery, f"the n={n} cell shows galleries of {[len(g) for g in galleries]} figures"
        got[n] = _grid(gallery[-1])
        widths = {round(b[2]) for b in gallery[-1]}
        assert max(widths) - min(widths) <= 2, f"n={n}: figures of different widths {sorted(widths)}"
    side = {4: 2, 9: 3}
    assert all(got[n] == [side[n]] * side[n] for n in got), \
        f"figures per row: n=4 {got[4]} (want [2, 2]), n=9 {got[9]} (want [3, 3, 3])"


def test_saved_path_is_a_link(outputs_lab, outputs_run):
    page = outputs_run
    _activate(page, OUTPUTS_NB)
    saved = sorted(p for p in (outputs_lab["root"] / "saved-images").glob("*")
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    assert saved, "--save saved-images wrote no image next to the notebook"
    rel = saved[0].relative_to(outputs_lab["root"]).as_posix()
    pid = _panel_id(page, OUTPUTS_NB)
    # the link as the output holds it (JupyterLab rewrites a relative href to a /files/ URL on screen)
    html = page.evaluate(f"""([path, index]) => ({_PANEL_JS})(path).content.widgets[index].model.outputs.toJSON()
                             .map(o => (o.data || {{}})['text/html'] || '').map(h => Array.isArray(h) ? h.join('') : h)
                             .join('\\n')""", [OUTPUTS_NB, CELL_SAVE])
    hrefs = re.findall(r"""<a\b[^>]*\bhref=["']([^"']*)["']""", html)
    links = page.evaluate("""([id, index]) => {
        const cell = Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.id === id).content.widgets[index].node;
        return [...cell.querySelectorAll('figcaption a')].map(a => ({href: a.getAttribute('href'), url: a.href,
                                                                     text: a.textContent}));
    }""", [pid, CELL_SAVE])
    caption = page.evaluate("""([id, index]) => {
        const cell = Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.id === id).content.widgets[index].node;
        return [...cell.querySelectorAll('figcaption')].map(f => f.innerHTML).join('\\n'); }""", [pid, CELL_SAVE])
    assert links, f"the caption of a saved image has no link: {caption[:500]}"
    assert any(saved[0].name in (x["href"] or "") for x in links), f"no link to {rel} on screen: {links}"
    href = next((h for h in hrefs if saved[0].name in h), None)
    assert href, f"the output's HTML has no link to {rel}: {hrefs}"
    assert not re.match(r"^(file:|[a-z]+:|/(?!lab/tree/|files/))", href), \
        f"the link {href!r} is not a path JupyterLab opens (relative to the notebook, or /lab/tree/...)"
    # clicking it opens the file in JupyterLab
    page.locator(f".jp-NotebookPanel[id='{pid}'] figcaption a", has_text=saved[0].name).first.click()
    page.wait_for_function(
        "(rel) => { const w = window.jupyterapp.shell.currentWidget; return w && w.context && w.context.path === rel; }",
        arg=rel, timeout=15_000)


# ---------------------------------------------------------------------------------------------
# points 1-5: what a cell shows (points.ipynb: Run All, an interrupt, then the saved file)
# ---------------------------------------------------------------------------------------------
POINTS_NB = "points.ipynb"
POINT_CELLS = [
    OUTPUT_CELLS[0],                                                                   # 0: its emulator
    "%%imagegen -n 2 --out pair\na pair of red kites over a green hill",              # 1: point 1
    # 2: point 2, the response is there without an Out[] line
    'print("_ is", type(_).__name__, "| pair is", type(pair).__name__)\n'
    'print("Out:", sorted((k, type(v).__name__) for k, v in Out.items()))',
    "%%imagegen --fault 429:retry_after=3\na lighthouse in the fog",                   # 3: point 3
    "%%imagegen --fault 402\na golden retriever puppy",                                # 4: point 4
    "%%imagegen --fault 402 --debug\na golden retriever puppy",                        # 5
    "%%imagegen --api openrouter --fault 400:kind=size\na golden retriever puppy",     # 6
    "%%imagegen --sise 10\na cat",                                                    # 7: point 5
    'print("queued after the mistake, and ran")',                                      # 8
    "%%imagegen --api openrouter --size 5000x5000\na wide mountain range",            # 9
    "%%imagegen?",                                                                     # 10
    "%%imagegen --fault slow_headers:delay=20\na slow snail",                          # 11: point 2, interrupted
]
(P_PAIR, P_CHECK, P_RETRY, P_402, P_402_DEBUG, P_OR_SIZE, P_SISE, P_AFTER, P_5000, P_HELP,
 P_SLOW) = range(1, 12)
#: the text of the 429 the emulator sends (the log may shorten it, at a word boundary)
RETRY_MESSAGE_MODEL = "gpt-image-1"

#: what cell `index` of the notebook at `path` shows, and what its outputs hold
_POINT_JS = f"""async ([path, index]) => {{
  const nb = ({_PANEL_JS})(path).content, c = nb.widgets[index];
  // in view, so innerText is the rendered text (a cell out of view is not rendered)
  await nb.scrollToItem(index, 'start');
  for (let k = 0; k < 3; k++) await new Promise(r => requestAnimationFrame(r));
  const area = c.node.querySelector('.jp-OutputArea');
  const outputs = c.model.outputs.toJSON();
  const imgs = area ? [...area.querySelectorAll('img')] : [];
  const log = c.node.querySelector('.jp-OutputArea .imagegen-log');
  const box = c.node.querySelector('.jp-OutputArea .imagegen-error');
  return {{
    prompt: (c.node.querySelector('.jp-InputArea-prompt') || {{textContent: ''}}).textContent.trim(),
    text: area ? area.textContent : '',
    inner: area ? area.innerText : '',
    outputPrompts: [...c.node.querySelectorAll('.jp-OutputArea-prompt')].map(p => p.textContent.trim()).filter(Boolean),
    images: imgs.length,
    rendered: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    sources: imgs.map(i => i.src.slice(-64)),
    outputs: outputs.map(o => ({{type: o.output_type, mimes: Object.keys(o.data || {{}}), ename: o.ename || '',
                                evalue: o.evalue || '', traceback: o.traceback || [],
                                text: Array.isArray(o.text) ? o.text.join('') : (o.text || ''),
                                plain: [].concat((o.data || {{}})['text/plain'] || []).join(''),
                                html: [].concat((o.data || {{}})['text/html'] || []).join('')}})),
    logs: c.node.querySelectorAll('.jp-OutputArea .imagegen-log').length,
    log: log ? log.textContent : '',
    logState: log ? log.dataset.state : '',
    box: box ? box.innerText : '',
    boxTitle: box ? [...box.children].slice(0, 2).map(e => e.textContent).join(' ') : '',
    details: box ? [...box.querySelectorAll('details')].map(d => d.textContent) : [],
    errorText: [...c.node.querySelectorAll('.jp-OutputArea [data-mime-type="application/vnd.jupyter.stderr"]')]
               .map(e => e.textContent),
    areaHtml: area ? area.outerHTML.slice(-3000) : '',
  }};
}}"""


def _point(page, index: int) -> dict:
    return page.evaluate(_POINT_JS, [POINTS_NB, index])


def _retry_line(log_text: str) -> str:
    """The retry line of a log (its textContent: the lines run together, each from its "N.Ns")."""
    m = re.search(r"429 rate limited — (?:retrying in|retried after|retrying now).*?(?=\s*\d+\.\ds\s|$)", log_text)
    return m.group(0) if m else ""


@pytest.fixture(scope="module")
def points_run(outputs_lab, lab_page):
    """points.ipynb run with Run > Run All Cells in the module's page; while it runs, the log of
    the 429 cell is read every 150 ms, and when the last cell (a request that hangs) shows
    "attempt 1/", Kernel > Interrupt Kernel. Yields (page, {"retry_texts": [...], ...})."""
    page, _ = lab_page
    root = outputs_lab["root"]
    (root / POINTS_NB).write_text(json.dumps(_notebook(POINT_CELLS), indent=1), encoding="utf-8")
    page.evaluate("""() => Array.from(window.jupyterapp.shell.widgets('main')).forEach(w => {
        if (w.context && w.context.model) w.context.model.dirty = false;
        w.close(); })""")
    _open(page, POINTS_NB)
    ARTIFACTS.mkdir(exist_ok=True)
    _run_all(page, POINTS_NB)
    seen = {"retry_texts": [], "retry_logs": set(), "retry_lines": set(), "retry_shot": False}
    deadline = time.monotonic() + 60
    while True:
        # the retry cell's log, every 150 ms: each distinct text of its retry line, in order, with
        # where the log is (JupyterLab draws an updated output anew: the element changes, the
        # output it is, its place among the cell's outputs, does not), how many logs and retry lines
        r = page.evaluate(f"""([path, index]) => {{
            const node = ({_PANEL_JS})(path).content.widgets[index].node;
            const children = [...node.querySelectorAll('.jp-OutputArea-child')];
            return [...node.querySelectorAll('.jp-OutputArea .imagegen-log')].map(l => [
                children.findIndex(ch => ch.contains(l)), l.textContent,
                (l.textContent.match(/429 rate limited/g) || []).length]); }}""", [POINTS_NB, P_RETRY])
        if r:
            seen["retry_logs"].add(len(r))
        for slot, text, lines in r:
            line = _retry_line(text)
            if line:
                seen["retry_lines"].add(lines)
            if line and (not seen["retry_texts"] or seen["retry_texts"][-1][1] != line):
                seen["retry_texts"].append((slot, line))
            if "retrying in 2 s" in line and not seen["retry_shot"]:
                seen["retry_shot"] = True
                _shot(page, POINTS_NB, P_RETRY, ARTIFACTS / "outputs-3-countdown.png")
        slow = _point(page, P_SLOW)
        if "attempt 1/" in slow["log"]:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the last cell never showed 'attempt 1/': {slow['text'][:300]!r}; "
                        f"retry lines seen: {seen['retry_texts']}")
        page.wait_for_timeout(150)
    page.wait_for_timeout(300)
    seen["interrupted_at"] = time.monotonic()
    _menu(page, "Kernel", "Interrupt Kernel")
    state = _wait_all(page, [POINTS_NB], time.monotonic() + 30)
    seen["interrupt_took"] = time.monotonic() - seen["interrupted_at"]
    assert _done(state[POINTS_NB]), _describe(state[POINTS_NB])
    _render_all(page, POINTS_NB)
    page.wait_for_function("() => [...document.querySelectorAll('.jp-OutputArea img')].every(i => i.complete)")
    yield page, seen


def _saved_points(page, root: Path):
    """Save points.ipynb from the page (the menu File > Save Notebook) and read the file with nbformat."""
    import nbformat

    _activate(page, POINTS_NB)
    before = (root / POINTS_NB).stat().st_mtime_ns
    _menu(page, "File", "Save Notebook")
    deadline = time.monotonic() + 15
    while (root / POINTS_NB).stat().st_mtime_ns == before and time.monotonic() < deadline:
        time.sleep(0.1)
    nb = nbformat.read(str(root / POINTS_NB), as_version=4)
    assert any(c.get("outputs") for c in nb.cells), "the saved notebook has no outputs"
    return nb


def test_images_are_standard_image_outputs(outputs_lab, points_run):
    """Point 1: an -n 2 cell's images are image/png or image/jpeg outputs (2, the first with the
    gallery HTML) in the saved file; the page shows each image once."""
    page, _ = points_run
    nb = _saved_points(page, outputs_lab["root"])
    cell = nb.cells[P_PAIR]
    kinds = [(o["output_type"], sorted(o.get("data", {}))) for o in cell.outputs]
    with_image = [o for o in cell.outputs if {"image/png", "image/jpeg"} & set(o.get("data", {}))]
    assert len(with_image) == 2, f"the -n 2 cell saved {len(with_image)} image outputs: {kinds}"
    assert all(o["output_type"] == "display_data" for o in with_image), kinds
    for o in with_image:
        mime = "image/png" if "image/png" in o["data"] else "image/jpeg"
        data = o["data"][mime]
        assert isinstance(data, str) and len(data) > 1000 and not data.startswith("data:"), \
            f"{mime} is not base64 image data: {data[:80]!r}"
    first_html = with_image[0]["data"].get("text/html", "")
    assert "imagegen-gallery" in first_html, f"the first image output carries no gallery HTML: {kinds}"
    assert "imagegen-gallery" not in with_image[1]["data"].get("text/html", ""), \
        f"the second image output carries a gallery too (shown twice): {kinds}"
    shown = _point(page, P_PAIR)
    _shot(page, POINTS_NB, P_PAIR, ARTIFACTS / "outputs-1.png")
    assert shown["images"] == 2 and shown["rendered"] == 2, \
        f"the -n 2 cell shows {shown['rendered']} rendered of {shown['images']} images (want 2): {shown['sources']}"
    assert len(set(shown["sources"])) == 2, f"an image is shown twice: {shown['sources']}"


def test_no_out_line_and_one_line_cancel(outputs_lab, points_run):
    """Point 2: no execute_result (no Out[] prompt, no <ImageResponse text) after a magic cell,
    yet `_`, Out[n] and --out give the response; Kernel > Interrupt Kernel ends a cell with one
    line, GenerationCancelled: image generation cancelled after ..., and the log says cancelled."""
    page, seen = points_run
    nb = _saved_points(page, outputs_lab["root"])
    for i, cell in enumerate(nb.cells):
        if _MAGIC.match(cell.source) and "?" not in cell.source.splitlines()[0]:
            results = [o for o in cell.outputs if o["output_type"] == "execute_result"]
            assert not results, f"saved cell {i} ({cell.source.splitlines()[0]!r}) has an Out[]: {results[0]['data']}"
    for i in (P_PAIR, P_RETRY, P_402, P_5000):
        shown = _point(page, i)
        assert not shown["outputPrompts"], f"cell {i} shows output prompts {shown['outputPrompts']}"
        assert "<ImageResponse" not in shown["text"] and "ImageResponse" not in shown["text"], \
            f"cell {i} shows the response's repr: {shown['text'][:300]!r}"
        assert not [o for o in shown["outputs"] if o["type"] == "execute_result"], f"cell {i}: {shown['outputs']}"
    n = re.fullmatch(r"\[(\d+)\]:", _point(page, P_PAIR)["prompt"]).group(1)
    check = _point(page, P_CHECK)
    assert "_ is ImageResponse | pair is ImageResponse" in check["text"], check["text"]
    assert f"({n}, 'ImageResponse')" in check["text"], f"Out[{n}] is not the response: {check['text']}"

    slow = _point(page, P_SLOW)
    _shot(page, POINTS_NB, P_SLOW, ARTIFACTS / "outputs-2.png")
    errors = [o for o in slow["outputs"] if o["type"] == "error"]
    assert len(errors) == 1, f"the interrupted cell's outputs: {[(o['type'], o['mimes']) for o in slow['outputs']]}"
    assert errors[0]["ename"] == "GenerationCancelled", errors[0]
    lines = [ln for ln in "\n".join(errors[0]["traceback"]).splitlines() if ln.strip()]
    assert len(lines) == 1, f"the cancel shows {len(lines)} lines, not one:\n" + "\n".join(lines)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", lines[0])
    assert re.fullmatch(r"GenerationCancelled: image generation cancelled after \d+(\.\d+)? s\b.*", plain), plain
    shown_error = [t for t in slow["errorText"] if t.strip()]
    assert len(shown_error) == 1 and len(shown_error[0].strip().splitlines()) == 1, \
        f"the page shows the error as {shown_error}: {slow['areaHtml']}"
    assert "Traceback" not in slow["text"], slow["text"][:500]
    assert slow["logState"] == "cancelled" and re.search(r"cancelled after \d+\.\d s", slow["log"]), slow["log"]
    assert seen["interrupt_took"] < 10, f"the interrupt took {seen['interrupt_took']:.1f} s"


def test_retry_countdown(points_run):
    """Point 3: the retry line of one log counts down 3 s, 2 s, 1 s, then says "retried after 3 s";
    the server's message in it is whole or shortened with "…" at a word boundary."""
    from jupyter_imagegen.emulator.faults import openai_fault_error, parse_fault

    page, seen = points_run
    _shot(page, POINTS_NB, P_RETRY, ARTIFACTS / "outputs-3.png")
    texts = [t for _, t in seen["retry_texts"]]
    slots = {slot for slot, _ in seen["retry_texts"]}
    assert seen["retry_logs"] == {1} and seen["retry_lines"] == {1} and len(slots) == 1, \
        (f"the countdown was not one line of one log updated in place: logs in the cell {seen['retry_logs']}, "
         f"retry lines in a log {seen['retry_lines']}, output slots {slots}")
    assert _point(page, P_RETRY)["logs"] == 1
    wanted = ["retrying in 3 s", "retrying in 2 s", "retrying in 1 s"]
    at = [next((k for k, t in enumerate(texts) if w in t), None) for w in wanted]
    assert None not in at and at == sorted(at), f"the countdown read {texts}"
    final = _retry_line(_point(page, P_RETRY)["log"])
    assert "retried after 3 s" in final, f"the retry line ends as {final!r}"
    assert len([t for t in texts if "retrying in" in t]) >= 3
    full = " ".join(openai_fault_error(parse_fault("429:retry_after=3"), RETRY_MESSAGE_MODEL, None)["message"].split())
    said = final.split(" · ", 1)[1].strip() if " · " in final else ""
    assert said, f"the retry line does not show the server's message: {final!r}"
    if said != full:
        assert said.endswith("…"), f"the server's message is cut without '…': {said!r}"
        kept = said[:-1]
        assert full.startswith(kept) and len(kept) > 20, f"{said!r} is not the start of {full!r}"
        assert not (kept[-1].isalnum() and full[len(kept)].isalnum()), f"the message is cut mid-word: {said!r}"


def test_errors_once_and_readable(points_run):
    """Point 4: a 402's message once, "HTTP 402 · insufficient_quota" beside the title, a
    suggestion about credits, the masked key, no raw JSON; --debug folds the raw answer away.
    OpenRouter's 400 (size): the message once, the sizes it takes, no raw JSON."""
    page, _ = points_run
    message = "You exceeded your current quota, please check your plan and billing details."
    masked = f"{EMU_TOKEN[:4]}...{EMU_TOKEN[-4:]}"
    c = _point(page, P_402)
    _shot(page, POINTS_NB, P_402, ARTIFACTS / "outputs-4.png")
    assert c["box"], f"the 402 cell shows no error box: {c['text'][:300]!r}"
    assert c["text"].count(message) == 1, f"the message shows {c['text'].count(message)} times: {c['inner']!r}"
    assert re.fullmatch(r"Image generation failed\s*\(HTTP 402 · insufficient_quota\)", c["boxTitle"].strip()), c["boxTitle"]
    assert re.search(r"credits", c["box"], re.I), c["box"]
    assert masked in c["box"] and EMU_TOKEN not in c["text"], c["box"]
    assert '{"error"' not in c["text"] and not any('{"error"' in o["html"] + o["plain"] + o["text"]
                                                   for o in c["outputs"]), c["outputs"]
    assert not c["details"]
    assert not [o for o in c["outputs"] if o["type"] == "error"], "the 402 cell failed (it stops Run All)"
    d = _point(page, P_402_DEBUG)
    assert len(d["details"]) == 1 and d["text"].count(message) - d["details"][0].count(message) == 1, d["inner"]
    assert len(d["details"]) == 1 and '{"error"' in d["details"][0] and "--debug" in d["details"][0], d["details"]
    _cell_locator(page, POINTS_NB, P_402_DEBUG).locator("details summary").click()
    _shot(page, POINTS_NB, P_402_DEBUG, ARTIFACTS / "outputs-4-debug.png")
    o = _point(page, P_OR_SIZE)
    _shot(page, POINTS_NB, P_OR_SIZE, ARTIFACTS / "outputs-4-openrouter.png")
    said = "Unsupported image size. Supported sizes are 1K, 2K and 4K."
    assert o["text"].count(said) == 1, f"OpenRouter's message shows {o['text'].count(said)} times: {o['inner']!r}"
    assert "HTTP 400" in o["boxTitle"] and re.search(r"1K, 2K, 4K", o["box"]), o["box"]
    assert masked in o["box"] and '{"error"' not in o["text"] and '\\"error\\"' not in o["text"], o["box"]


def test_bad_options_say_what_to_do(points_run):
    """Point 5: --sise shows "unknown option --sise; did you mean --size?" in a box and the cell
    queued after it runs; %%imagegen? starts with the usage line; --size 5000x5000 on OpenRouter
    says what was sent instead."""
    page, _ = points_run
    s = _point(page, P_SISE)
    _shot(page, POINTS_NB, P_SISE, ARTIFACTS / "outputs-5.png")
    assert "unknown option --sise; did you mean --size?" in s["box"], f"the --sise cell shows {s['inner']!r}"
    assert not [o for o in s["outputs"] if o["type"] == "error"] and not s["errorText"], s["outputs"]
    after = _point(page, P_AFTER)
    assert re.fullmatch(r"\[\d+\]:", after["prompt"]) and "queued after the mistake, and ran" in after["text"], after
    big = _point(page, P_5000)
    _shot(page, POINTS_NB, P_5000, ARTIFACTS / "outputs-5-size.png")
    assert "size 5000x5000 was sent as aspect_ratio 1:1" in big["log"], big["log"]
    assert big["rendered"] == 1, big
    h = _point(page, P_HELP)
    # the top of the help (the whole is taller than the page)
    loc = _cell_locator(page, POINTS_NB, P_HELP)
    page.evaluate(f"(path) => ({_PANEL_JS})(path).content.scrollToItem({P_HELP}, 'start')", POINTS_NB)
    page.wait_for_timeout(200)
    box = loc.bounding_box()
    page.screenshot(path=str(ARTIFACTS / "outputs-5-help.png"),
                    clip={"x": box["x"], "y": box["y"], "width": box["width"], "height": min(box["height"], 500)})
    help_text = h["inner"] or h["text"]
    lines = [ln for ln in help_text.splitlines() if ln.strip()]
    assert lines, f"%%imagegen? shows nothing in its cell: {h}"
    k = 1 if re.match(r"\s*Docstring:\s*$", lines[0]) else 0
    assert lines[k].strip().startswith("%%imagegen [options]"), f"the help starts with {lines[:3]}"
    assert not [ln for ln in lines if ln.strip() == "::" or ln.rstrip().endswith("::")], \
        [ln for ln in lines if "::" in ln][:3]
