"""Shared pytest fixtures."""
from __future__ import annotations

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
