"""Declares emcore's Cython extensions; all metadata lives in pyproject.toml.

Set ``EMCORE_CYTHON_DEBUG=1`` to build with bounds checking and without the
fast-path directives (a debug build for chasing memory errors). The kernels'
other code paths (emcore/include/emcore/vec4.h): ``CFLAGS=-DEMC_NO_CLONES``
compiles only the baseline x86-64 version of the vector loops,
``CFLAGS=-DEMC_NO_GNU_EXTENSIONS`` every plain-C fallback (ci/kernels_fallback.sh
builds and tests both).
"""
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("EMCORE_CYTHON_DEBUG", "") not in ("", "0")

if sys.platform == "win32":
    OPENMP_COMPILE, OPENMP_LINK = ["/openmp"], []
elif sys.platform == "darwin":
    # Apple clang needs libomp (brew install libomp); EMCORE_NO_OPENMP=1 builds serial.
    OPENMP_COMPILE, OPENMP_LINK = ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
else:
    OPENMP_COMPILE, OPENMP_LINK = ["-fopenmp"], ["-fopenmp"]
if os.environ.get("EMCORE_NO_OPENMP", "") not in ("", "0"):
    OPENMP_COMPILE, OPENMP_LINK = [], []

EXTRA_COMPILE = [] if sys.platform == "win32" else ["-O3"]

# emcore's public C headers (installed: a third party's compiled family includes
# them with include_dirs=[emcore.get_include()]), and each module's own
HEADERS = "emcore/include/emcore/"
SHARED = [HEADERS + "vec4.h", HEADERS + "vexp.h", HEADERS + "moments.h"]

# module name -> (source, the headers it includes: a change rebuilds it);
# plugins/ is installed as emcore.plugins
MODULES = {
    "emcore.blas": ("emcore/blas.pyx", []),
    "emcore.kernel": ("emcore/kernel.pyx", [HEADERS + "moments.h", HEADERS + "vec4.h"]),
    "emcore._core._passes": ("emcore/_core/_passes.pyx", ["emcore/_core/_rows.h"]),
    "emcore._core._markov": ("emcore/_core/_markov.pyx",
                             ["emcore/_core/_markov.h", HEADERS + "vec4.h", HEADERS + "vexp.h"]),
    "emcore._core._missing_kernel": ("emcore/_core/_missing_kernel.pyx",
                                     ["emcore/_core/_missing.h"] + SHARED),
    "emcore.plugins._gaussian_kernel": ("plugins/_gaussian_kernel.pyx",
                                        ["plugins/_gaussian_full.h",
                                         "plugins/_soft_posterior.h"] + SHARED),
    "emcore.plugins._gaussian_diag_kernel": ("plugins/_gaussian_diag_kernel.pyx",
                                             ["plugins/_gaussian_diag.h",
                                              "plugins/_soft_posterior.h"] + SHARED),
    "emcore.plugins._posterior_kernels": ("plugins/_posterior_kernels.pyx",
                                          ["plugins/_soft_posterior.h"] + SHARED),
    "emcore.plugins._kmeans_kernel": ("plugins/_kmeans_kernel.pyx",
                                      ["plugins/_lloyd.h"] + SHARED),
    "emcore.plugins._discrete_kernel": ("plugins/_discrete_kernel.pyx",
                                        ["plugins/_discrete.h"] + SHARED),
    "emcore._core._pack": ("emcore/_core/_pack.pyx", []),
}

extensions = [
    Extension(
        name,
        [source],
        include_dirs=[numpy.get_include(), "emcore/include"],
        extra_compile_args=EXTRA_COMPILE + OPENMP_COMPILE,
        extra_link_args=OPENMP_LINK,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        depends=headers,
    )
    for name, (source, headers) in MODULES.items()
]

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
}

setup(ext_modules=cythonize(extensions, compiler_directives=directives, include_path=["."]))
