"""cffi builder for ``ring._ring``: the teeif shared ring's C hot path.

Build-only code: setup.py names ``ffi`` here through ``cffi_modules`` so that
``pip install .`` compiles it; runnable by hand (``python
cffi_build/build_ring.py``) to build in place for debugging.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffi = FFI()
ffi.cdef((HERE / "teeif.h").read_text())
ffi.set_source(
    "ring._ring",
    '#include <stdint.h>\n#include "teeif.h"\n',
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-std=c11"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
