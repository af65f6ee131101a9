"""cffi builder for ``ring._ring``: the teeif shared ring's C hot path.

Build-only code, never installed: setup.py names ``ffi`` here through
``cffi_modules`` so that ``pip install .`` compiles it. teeif.h is both the
cdef and the header the C sources include. Runnable by hand (``python
cffi_build/build_ring.py``) to build in place for debugging.
"""

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
# One concept per file: the ring's two ends, its SIGBUS guard, the event channel, the floor,
# the answers given in C, the SMC gate's hypercall path, the machine probes.
SOURCES = ["teeif_ring.c", "teeif_guard.c", "teeif_evtchn.c", "teeif_floor.c", "teeif_fast.c", "teeif_gate.c",
           "teeif_probe.c"]

ffi = FFI()
ffi.cdef((HERE / "teeif.h").read_text())
ffi.set_source(
    "ring._ring",
    "#include <stddef.h>\n#include <stdint.h>\n#include \"teeif.h\"\n",
    # setuptools wants sources relative to the directory it runs in.
    sources=[os.path.relpath(HERE / name) for name in SOURCES],
    depends=[os.path.relpath(HERE / name) for name in ("teeif.h", "teeif_private.h")],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
