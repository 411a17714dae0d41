"""How tests run the installed ``emcore`` command."""

import sys
from pathlib import Path


def emcore_command() -> list:
    """The installed console script next to the interpreter, else ``python -m emcore``."""
    bindir = Path(sys.executable).parent
    for name in ("emcore", "emcore.exe"):
        if (bindir / name).is_file():
            return [str(bindir / name)]
    return [sys.executable, "-m", "emcore"]
