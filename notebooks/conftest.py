"""Settings for running these notebooks under nbval (`python3 -m pytest --nbval-lax notebooks/`).

From the test suite the notebooks must never call a real API (even when the developer has
IMAGE_AUTH_TOKEN set) and must not write images into the repository: force the built-in
emulator and send saved images to a temporary folder. (tests/test_notebooks.py runs nbval in a
subprocess with the same settings; this file covers running nbval over notebooks/ directly.)
"""
import os
import shutil
import tempfile


def pytest_configure(config):
    os.environ["IMAGEGEN_EMULATOR"] = "1"
    if not os.environ.get("IMAGEGEN_OUT"):
        out = tempfile.mkdtemp(prefix="imagegen-nbval-")
        os.environ["IMAGEGEN_OUT"] = out
        config.add_cleanup(lambda: shutil.rmtree(out, ignore_errors=True))
