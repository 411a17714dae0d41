"""The example third-party plugin (examples/emcore-poisson) for the tests.

``installed()`` says whether the distribution is installed (ci/test.sh and
ci/wheel.sh install it next to emcore); ``poisson_module()`` returns its module:
the installed ``emcore_poisson``, else the source file in the repository loaded
under a private name, so tests that only need the family class run from a plain
checkout too. None when neither is there (e.g. an unpacked sdist).
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import sys
from pathlib import Path

DISTRIBUTION = "emcore-poisson"
SOURCE = (Path(__file__).resolve().parent.parent / "examples" / "emcore-poisson" / "src"
          / "emcore_poisson" / "__init__.py")
_PRIVATE_NAME = "_emcore_poisson_from_source"


def installed() -> bool:
    try:
        md.distribution(DISTRIBUTION)
    except md.PackageNotFoundError:
        return False
    return True


def poisson_module():
    if installed():
        import emcore_poisson
        return emcore_poisson
    if _PRIVATE_NAME in sys.modules:
        return sys.modules[_PRIVATE_NAME]
    if not SOURCE.is_file():
        return None
    spec = importlib.util.spec_from_file_location(_PRIVATE_NAME, SOURCE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PRIVATE_NAME] = module      # before exec: pickling finds the classes
    spec.loader.exec_module(module)
    return module
