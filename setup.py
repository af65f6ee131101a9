# setuptools cannot take `cffi_modules` from pyproject.toml (cffi issue #55),
# so it is declared here; so is the build step of the guest device's
# LD_PRELOAD library (preload/build_preload.py), which is a plain shared
# library rather than an extension module. Everything else about the
# distribution lives in pyproject.toml.
import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "preload"))
from build_preload import build_ext

setup(cffi_modules=["cffi_build/build_ring.py:ffi"], cmdclass={"build_ext": build_ext})
