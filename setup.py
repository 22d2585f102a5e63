"""Build the Cython extensions; everything else lives in pyproject.toml."""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

# SPEEDDATA_DEBUG=1 builds with bounds checks everywhere and without -O3, for gdb/valgrind.
DEBUG = os.environ.get("SPEEDDATA_DEBUG") == "1"
CFLAGS = ["-O0", "-g"] if DEBUG else ["-O3"]


def ext(name, numpy_headers=False):
    return Extension(
        f"speeddata.{name}",
        [f"src/speeddata/{name}.pyx"],
        include_dirs=[numpy.get_include()] if numpy_headers else [],
        extra_compile_args=CFLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")] if numpy_headers else [],
    )


EXTENSIONS = [ext("_validate")]

setup(
    ext_modules=cythonize(
        EXTENSIONS,
        compiler_directives={"language_level": "3", "embedsignature": True},
        include_path=["src"],
    ),
)
