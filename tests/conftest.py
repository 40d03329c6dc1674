"""Shared pytest fixtures."""
from __future__ import annotations

import pytest

# ---------------------------------------------------------------------------------------------
# Emulator fixtures (owned by the emulator; other fixtures go in their own section below)
# ---------------------------------------------------------------------------------------------
from jupyter_imagegen.emulator import Emulator

#: the bearer token the `emulator` fixture requires
EMULATOR_TOKEN = "sk-test-emulator-token-0123456789"


@pytest.fixture
async def emulator():
    """A started :class:`Emulator` on 127.0.0.1 (ephemeral port) requiring ``EMULATOR_TOKEN``."""
    emu = Emulator(token=EMULATOR_TOKEN)
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()

# ---------------------------------------------------------------------------------------------
# end of the emulator fixtures
# ---------------------------------------------------------------------------------------------
