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


# Each compiled module, built when its .pyx exists (modules arrive one issue at a time).
EXTENSIONS = [
    ext(name, numpy_headers=numpy_headers)
    for name, numpy_headers in [
        ("_validate", False),
        ("_encode", True),
        ("_relay", False),
        ("_columns", True),
        ("_pivot", True),
    ]
    if os.path.exists(f"src/speeddata/{name}.pyx")
]

setup(
    ext_modules=cythonize(
        EXTENSIONS,
        compiler_directives={"language_level": "3", "embedsignature": True},
        include_path=["src"],
    ),
)
