"""Shared pytest fixtures."""
from __future__ import annotations

import os

import pytest

# ---------------------------------------------------------------------------------------------
# Emulator fixtures (owned by the emulator; other fixtures go in their own section below)
# ---------------------------------------------------------------------------------------------
from jupyter_imagegen.emulator import Emulator, EmulatorThread

#: the bearer token the emulator fixtures require, unless the test module sets its own `TOKEN`
EMULATOR_TOKEN = "sk-test-emulator-token-0123456789"


def emulator_token(request: pytest.FixtureRequest) -> str:
    """The token the emulator fixtures require: the test module's ``TOKEN`` if it has one (so its
    leak checks look for its own recognisable key), else ``EMULATOR_TOKEN``."""
    return getattr(request.module, "TOKEN", EMULATOR_TOKEN)


@pytest.fixture
async def emulator(request):
    """A started :class:`Emulator` on 127.0.0.1 (ephemeral port), on the test's loop, for one test."""
    async with Emulator(token=emulator_token(request)) as emu:
        yield emu


@pytest.fixture(scope="module")
def emulator_thread(request):
    """An :class:`EmulatorThread` (its own loop, for sync code, magics and kernels) shared by the
    tests of one module: its request log keeps what the module's earlier tests sent."""
    with EmulatorThread(token=emulator_token(request)) as emu:
        yield emu

# ---------------------------------------------------------------------------------------------
# end of the emulator fixtures
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# The kernel's configuration and the IPython shell (the magic, the form, compare, history)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def emulator_env(request, monkeypatch, tmp_path):
    """A function that points the IMAGE_* environment (what the magic, the form and compare read)
    at an emulator, undone after the test:

        emulator_env(emu, api="openai_images", cache=False, **more)

    sets the emulator's token, `api` and its base URL on `emu`, the request cache in
    ``tmp_path/cache`` (off: ``IMAGE_CACHE=0``, unless ``cache=True``, the magic's default), and
    ``IMAGE_<NAME>`` for each of `more` (``max_attempts=2``); every other IMAGE_* setting of the
    developer is removed. Returns `emu`."""
    def point(emu, api: str = "openai_images", *, cache: bool = False, **more):
        for name in [n for n in os.environ if n.startswith("IMAGE_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("IMAGE_AUTH_TOKEN", emu.token or emulator_token(request))
        monkeypatch.setenv("IMAGE_API_TYPE", api)
        monkeypatch.setenv("IMAGE_BASE_URL", emu.base_url_for(api))
        monkeypatch.setenv("IMAGE_CACHE_DIR", str(tmp_path / "cache"))
        if not cache:
            monkeypatch.setenv("IMAGE_CACHE", "0")
        for name, value in more.items():
            monkeypatch.setenv(f"IMAGE_{name.upper()}", str(value))
        return emu
    return point


@pytest.fixture
def ip(emulator_thread, emulator_env, monkeypatch, tmp_path):
    """The test IPython shell as a kernel would have it: the extension loaded, IMAGE_* pointing at
    the module's `emulator_thread` (openai_images, cache off), no fault queued, tmp_path as the
    working directory, a fresh shared client (closed again after), and a display publisher that
    records every display message. Yields ``(shell, rec)``."""
    from IPython.testing import globalipapp

    from _magic_helpers import recording_display
    from jupyter_imagegen.runtime import runtime

    shell = globalipapp.get_ipython()
    emulator_env(emulator_thread)
    monkeypatch.chdir(tmp_path)
    shell.extension_manager.load_extension("jupyter_imagegen")
    runtime.close()            # a fresh session: its only connections are the test's own
    emulator_thread.clear_faults()
    try:
        with recording_display(shell) as rec:
            yield shell, rec
    finally:
        runtime.close()
