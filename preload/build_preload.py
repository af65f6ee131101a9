"""Build step for libstubdom_teedev.so, the LD_PRELOAD library of the guest
device (preload/teedev_preload.c; docs/guest-dev.md).

Build-only code, never installed: setup.py takes :class:`build_ext` from here
so that ``pip install .`` compiles the library after the cffi extension and
puts it in the ``stubdom.guestdev`` package (the build tree for a wheel, the
source tree for an editable install), where ``stubdom-teed guest-dev`` finds
it.  It is a plain shared library, not a Python extension: nothing imports
it; processes load it with LD_PRELOAD.  Runnable by hand
(``python preload/build_preload.py``) to build it in place.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools.command.build_ext import build_ext as _build_ext

HERE = Path(__file__).resolve().parent
SOURCES = ["teedev_preload.c"]
DEPENDS = ["teedev_wire.h"]
LIBRARY = "libstubdom_teedev.so"
PACKAGE = ("stubdom", "guestdev")
CFLAGS = ["-O2", "-std=gnu11", "-fPIC", "-Wall", "-Wextra", "-fvisibility=default"]


def build_library(compiler, build_temp: str, out_dir: str) -> str:
    """Compile and link the library into ``out_dir``; returns its path."""
    sources = [os.path.relpath(HERE / name) for name in SOURCES]
    objects = compiler.compile(sources, output_dir=build_temp, include_dirs=[os.path.relpath(HERE)],
                               extra_postargs=CFLAGS, depends=[os.path.relpath(HERE / d) for d in DEPENDS])
    os.makedirs(out_dir, exist_ok=True)
    compiler.link_shared_object(objects, LIBRARY, output_dir=out_dir, libraries=["dl", "pthread"])
    return os.path.join(out_dir, LIBRARY)


class build_ext(_build_ext):
    """The extension modules, then the LD_PRELOAD library."""

    def run(self) -> None:
        super().run()
        from setuptools._distutils.ccompiler import new_compiler
        from setuptools._distutils.sysconfig import customize_compiler

        compiler = new_compiler()
        customize_compiler(compiler)
        out_dir = os.path.join(*PACKAGE) if self.inplace else os.path.join(self.build_lib, *PACKAGE)
        build_library(compiler, self.build_temp, out_dir)

    def get_outputs(self) -> list[str]:
        return [*super().get_outputs(), os.path.join(self.build_lib, *PACKAGE, LIBRARY)]


if __name__ == "__main__":
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    os.chdir(HERE.parent)
    cc = new_compiler()
    customize_compiler(cc)
    print(build_library(cc, "build/preload", os.path.join(*PACKAGE)), file=sys.stderr)
