"""A file of fixed binary layout that every process of the machine maps.

The frame table, the domain registry and each p2m are such files: created
once (exclusively), opened by any other process, and read through
memoryview casts over the mapping. This base owns the mapping; subclasses
own the layout. The descriptor is closed as soon as the file is mapped:
Python's mmap keeps a duplicate of its own, so a mapping costs one
descriptor, and dropping the last reference to a handle (views, mapping)
gives it back without close().
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from pathlib import Path

from stubdom.rundir import FILE_MODE

from .errors import MachineFormatError

__all__ = ["MappedFile"]


class MappedFile:
    #: What the file is, for error messages ("frame table", "p2m file" ...).
    WHAT = "mapped file"
    #: Attributes holding memoryviews over the mapping, released on close.
    VIEWS: tuple[str, ...] = ()

    def __init__(self, path: Path, fd: int, mm: mmap.mmap) -> None:
        self.path = path
        self._mm = mm
        os.close(fd)  # the mapping holds its own duplicate

    @staticmethod
    def _create_mapping(path: Path, size: int, init: Callable[[int], None]) -> tuple[int, mmap.mmap]:
        """Create ``path`` (it must not exist), let ``init`` write its initial
        contents through the descriptor, and map ``size`` bytes of it."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # O_CREAT's mode less the umask: exactly FILE_MODE
            init(fd)
            return fd, mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _open_mapping(cls, path: Path, min_size: int) -> tuple[int, mmap.mmap]:
        """Map an existing file whole; the subclass then checks its layout."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise MachineFormatError(str(path), f"{cls.WHAT} missing") from None
        try:
            size = os.fstat(fd).st_size
            if size < min_size:
                raise MachineFormatError(str(path), f"{cls.WHAT} too short ({size} bytes)")
            return fd, mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        """Release the views and the mapping (and its descriptor); idempotent."""
        for name in self.VIEWS:
            view = self.__dict__.pop(name, None)
            if view is not None:
                view.release()
        if not self._mm.closed:
            self._mm.close()
