"""The notebooks in notebooks/ and the Binder environment.

* every notebook is valid, saved without outputs, holds no key, and starts the emulator itself;
* every notebook runs end to end under nbval (`--nbval-lax`) against the built-in emulator, in a
  subprocess with a clean environment (no IMAGE_* settings of the developer, images written to a
  temporary folder). When this session already runs nbval over notebooks/ (`--nbval-lax` in
  addopts with notebooks/ in testpaths), that test skips instead of running them twice;
* binder/ follows repo2docker's conventions: requirements install this repository, `start` ends
  with `exec "$@"`, nothing secret is exported.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
BINDER = ROOT / "binder"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))

#: key-shaped strings that must never be saved in a notebook
SECRET_PATTERNS = [
    re.compile(r"sk-(?:or-v1-|proj-|ant-)?[A-Za-z0-9_\-]{20,}"),
    re.compile(r"Bearer\s+[A-Za-z0-9_\-\.]{12,}"),
    re.compile(r"""IMAGE_AUTH_TOKEN['"]?\s*[\]=:]\s*=?\s*['"][^'"]+['"]"""),   # a literal assigned to it
    re.compile(r"%env\s+IMAGE_AUTH_TOKEN\s*=?\s*[A-Za-z0-9_\-]{8,}"),
]


def _ids(paths):
    return [p.name for p in paths]


def _read(path: Path):
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(path, as_version=4)


def _tags(cell) -> list:
    return list(cell.get("metadata", {}).get("tags", []))


def _checks_output(cell) -> bool:
    src = cell.source if isinstance(cell.source, str) else "".join(cell.source)
    return "nbval-check-output" in _tags(cell) or "# NBVAL_CHECK_OUTPUT" in src


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert "quickstart.ipynb" in names, f"notebooks/ holds {sorted(names)}"


# ---------------------------------------------------------------------------------------------
# static checks: the files as saved
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_valid_and_saved_clean(path):
    nbformat = pytest.importorskip("nbformat")
    nb = _read(path)
    nbformat.validate(nb)
    ks = nb.metadata.get("kernelspec", {})
    assert ks.get("language") == "python" and ks.get("name") == "python3", f"kernelspec {ks}"
    assert nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("#"), \
        "a notebook opens with a markdown title that says what it teaches"
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None) and not _checks_output(c)]
    assert not dirty, (f"cells {dirty} were saved with outputs or execution counts: clear them "
                       "(Edit > Clear Outputs of All Cells) or mark the cell nbval-check-output")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_holds_no_key(path):
    text = path.read_text(encoding="utf-8")
    for pat in SECRET_PATTERNS:
        m = pat.search(text)
        assert m is None, f"{path.name} contains something that looks like a key: {m.group(0)[:12]}..."


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_starts_the_emulator_itself(path):
    """They must run offline: the notebook starts the built-in emulator (when no key is set),
    and loads the extension before the first %%imagegen."""
    cells = [c for c in _read(path).cells if c.cell_type == "code"]
    assert any("jupyter_imagegen.emulator" in c.source for c in cells), f"{path.name} never starts the emulator"
    magic = [i for i, c in enumerate(cells) if re.search(r"^%%?imagegen\b", c.source, re.M)]
    if magic:
        loads = [i for i, c in enumerate(cells) if "load_ext jupyter_imagegen" in c.source]
        assert loads and loads[0] <= magic[0], f"{path.name}: %load_ext jupyter_imagegen must come before the magic"


def test_quickstart_covers_the_tour():
    """The quickstart shows what the issue lists; a later edit must not drop a step silently."""
    nb = _read(NB_DIR / "quickstart.ipynb")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for needle in ("%load_ext jupyter_imagegen", "%%imagegen\n", "%imagegen ", "-n 4", "--aspect 16:9",
                   "--aspect 9:16", "--size ", "--image sketch", "Image.new(", "--api openai_images",
                   "--api openai_responses", "--api openrouter", "--out ", ".artifacts[0].image.size",
                   "--save {out_dir}", 'os.environ.get("IMAGEGEN_OUT"', "--fault 429:retry_after=1",
                   "--fault 400", "EmulatorThread(", "IMAGE_CACHE_DIR"):
        assert needle in code, f"quickstart lost {needle!r}"
    # the deliberate mistake is shown without failing the cell: no notebook needs raises-exception
    assert "--size 800x600" in code
    assert not [c for c in nb.cells if "raises-exception" in _tags(c)]
    # every step is explained: no two code cells in a row without a markdown cell somewhere near
    md = sum(c.cell_type == "markdown" for c in nb.cells)
    assert md >= 15, f"only {md} markdown cells"



def test_iterate_covers_the_steps():
    """iterate.ipynb teaches cheap iteration; each step stays, and the cached re-run is proven."""
    nb = _read(NB_DIR / "iterate.ipynb")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    compare_cell = "%%imagegen --compare model=gpt-image-1,gpt-image-1-mini,gpt-image-1.5 --quality low --out grid"
    assert code.count(compare_cell) == 2, "the compare cell must appear twice (the second run is from the cache)"
    for needle in ("\n---\n", "grid.shape", "grid[", "emu.request_count", "assert after == before", "--fresh",
                   "--seed 7", "--save {out_dir}", 'os.environ.get("IMAGEGEN_OUT"', "from jupyter_imagegen import load",
                   "img.prompt", "img.model", "img.request", "%imagegen --from {path} --size 1536x1024",
                   "%imagegen_history", "history[-1]", "--image history[1]", "history[2].rerun()",
                   "%%imagegen --partials 3", "from jupyter_imagegen import compare", "compare(prompts=",
                   "EmulatorThread(", "stream_delay=", "IMAGE_CACHE_DIR"):
        assert needle in code, f"iterate.ipynb lost {needle!r}"
    md = sum(c.cell_type == "markdown" for c in nb.cells)
    assert md >= 12, f"only {md} markdown cells"

# ---------------------------------------------------------------------------------------------
# nbval: run every notebook against the emulator
# ---------------------------------------------------------------------------------------------
def _nbval_runs_in_this_session(config, notebook: Path) -> bool:
    """True when this pytest session itself runs nbval over `notebook` (e.g. `--nbval-lax` in
    addopts and notebooks/ in testpaths)."""
    if not (config.getoption("nbval", False) or config.getoption("nbval_lax", False)):
        return False
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        p = (base / str(arg).split("::")[0]).resolve()
        if p == notebook or p in notebook.parents:
            return True
    return False


def clean_env(tmp_path: Path) -> dict:
    """The environment of a fresh machine: no IMAGE_* settings, output and cache in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE")}
    env.update(IMAGEGEN_EMULATOR="1", IMAGEGEN_OUT=str(tmp_path / "out"),
               IMAGE_CACHE_DIR=str(tmp_path / "cache"), PYTHONUNBUFFERED="1",
               PYTHONDONTWRITEBYTECODE="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


@pytest.mark.kernel
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_nbval(path, tmp_path, request):
    if _nbval_runs_in_this_session(request.config, path):
        pytest.skip(f"nbval runs {path.name} directly in this session")
    pytest.importorskip("nbval")
    pytest.importorskip("ipykernel")
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
           "-q", "-rfE", "--timeout", "300", str(path.relative_to(ROOT))]
    images = lambda: {p for p in NB_DIR.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")}  # noqa: E731
    before = images()
    proc = subprocess.run(cmd, cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True, timeout=560)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nbval failed on {path.name}:\n{out[-6000:]}"
    assert re.search(r"\b\d+ passed\b", out), out[-2000:]
    new_files = sorted(map(str, images() - before))
    assert not new_files, f"running {path.name} saved images into notebooks/: {new_files[:5]}"


# ---------------------------------------------------------------------------------------------
# binder/
# ---------------------------------------------------------------------------------------------
def _project() -> dict:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:  # Python 3.10
        m = re.search(r'^name\s*=\s*"([^"]+)"', text, re.M)
        return {"name": m.group(1) if m else "", "optional-dependencies": {}, "requires-python": ""}
    return tomllib.loads(text)["project"]


def _lines(path: Path) -> list:
    return [ln.split("#", 1)[0].strip() for ln in path.read_text(encoding="utf-8").splitlines()
            if ln.split("#", 1)[0].strip()]


def test_binder_requirements_install_this_repository():
    reqs = _lines(BINDER / "requirements.txt")
    local = [r for r in reqs if re.fullmatch(r"(-e\s+|--editable[= ])?\.(\[[\w,\-]+\])?", r)]
    assert local, f"binder/requirements.txt must install the repository itself ('-e .' or '.'), has {reqs}"
    # a path starting with '.' is how repo2docker knows to copy the repository before `pip install`
    m = re.search(r"\[([\w,\-]+)\]", local[0])
    extras = _project().get("optional-dependencies", {})
    for extra in (m.group(1).split(",") if m else []):
        assert extra in extras, f"binder asks for the extra [{extra}], pyproject has {sorted(extras)}"


def test_binder_runtime_matches_requires_python():
    runtime = (BINDER / "runtime.txt").read_text().strip()
    m = re.fullmatch(r"python-3\.(\d+)", runtime)
    assert m, f"runtime.txt must be python-3.X, is {runtime!r}"
    req = _project().get("requires-python", "")
    low = re.search(r">=\s*3\.(\d+)", req)
    if low:
        assert int(m.group(1)) >= int(low.group(1)), f"{runtime} does not satisfy requires-python {req}"


@pytest.mark.parametrize("name", ["start", "postBuild"])
def test_binder_scripts_are_executable_shell(name):
    path = BINDER / name
    assert path.is_file(), f"binder/{name} is missing"
    assert os.access(path, os.X_OK), f"binder/{name} must be executable (git update-index --chmod=+x)"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/bash") or text.startswith("#!/usr/bin/env bash")
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert not re.search(r"IMAGE_AUTH_TOKEN\s*=", text), f"binder/{name} must not set a key"
    assert not any(p.search(text) for p in SECRET_PATTERNS[:2])


def test_binder_start_execs_the_command(tmp_path):
    code = _lines(BINDER / "start")
    assert code[-1] == 'exec "$@"', f'binder/start must end with exec "$@", ends with {code[-1]!r}'
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE")}
    env["HOME"] = str(tmp_path)
    env.pop("IMAGEGEN_OUT", None)
    proc = subprocess.run([str(BINDER / "start"), sys.executable, "-c",
                           "import os, sys; print(os.environ.get('IMAGEGEN_OUT')); print(sys.argv[1:])", "a b", "c"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(tmp_path / "imagegen-out")
    assert json.loads(lines[1].replace("'", '"')) == ["a b", "c"], "arguments must pass through unchanged"


@pytest.mark.timeout(120)
def test_binder_postbuild_check_passes(tmp_path):
    """postBuild is the build-time smoke test; it must pass here (offline, on loopback)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["IMAGE_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run([str(BINDER / "postBuild")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check passed" in proc.stdout
