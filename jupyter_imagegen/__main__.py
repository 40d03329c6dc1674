"""`python -m jupyter_imagegen demo|emulator|generate`: the console script without relying on PATH."""
import sys

from .cli import main

sys.exit(main())
