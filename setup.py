# Only the cffi extension is declared here: setuptools cannot take
# `cffi_modules` from pyproject.toml (cffi issue #55). Everything else about
# the distribution lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["cffi_build/build_ring.py:ffi"])
