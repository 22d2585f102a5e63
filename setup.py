"""Build the Cython extensions; everything else lives in pyproject.toml."""

import os

import shutil

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

# The web UI lives at the repository root (web/) and is installed as speeddata/web/ so that
# a non-editable install serves it; speeddata.server.web_root() finds either.
WEB = "web"


class BuildPyWithWeb(build_py):
    """build_py that also copies web/ into the built package as speeddata/web/."""

    def run(self):
        super().run()
        if os.path.isdir(WEB) and not self.editable_mode:
            dest = os.path.join(self.build_lib, "speeddata", "web")
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(WEB, dest)

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
        ("_mcast", False),
    ]
    if os.path.exists(f"src/speeddata/{name}.pyx")
]

setup(
    cmdclass={"build_py": BuildPyWithWeb},
    ext_modules=cythonize(
        EXTENSIONS,
        compiler_directives={"language_level": "3", "embedsignature": True},
        include_path=["src"],
    ),
)
