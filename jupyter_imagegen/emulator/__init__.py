"""A loopback emulator of the three image APIs (OpenRouter chat, OpenAI images, OpenAI Responses).

It is a real aiohttp server, independent of the client: it validates requests the way the real
APIs do, answers in their shapes with real Pillow-drawn images, and injects faults on demand
(see :mod:`jupyter_imagegen.emulator.faults` for the spec syntax).

    from jupyter_imagegen.emulator import Emulator, EmulatorThread, run_emulator_in_thread

    async with Emulator(token="sk-emulator-123") as emu:
        emu.add_faults("429:retry_after=1", "503")
        ...  # point a client at emu.base_url_for("openai_images")

    emu = run_emulator_in_thread(latency=0.2)     # sync code / notebooks
    ...; emu.stop()

Command line: ``python -m jupyter_imagegen.emulator --port 0``.
"""
from .app import create_app
from .auth import mask_key
from .call import Call, Generated
from .faults import FAULT_NAMES, Fault, parse_fault
from .server import Emulator, EmulatorThread, run_emulator_in_thread
from .state import EmulatorState
from .stream_hook import STREAM_HANDLERS, register_stream_handler
from .validate import ApiError

__all__ = [
    "Emulator", "EmulatorThread", "run_emulator_in_thread", "create_app", "EmulatorState",
    "Fault", "parse_fault", "FAULT_NAMES", "ApiError", "register_stream_handler", "STREAM_HANDLERS",
    "Call", "Generated", "mask_key",
]
