"""Shared-memory objects of the TEE subsystem (Linux drivers/tee/tee_shm.c).

A :class:`TeeShm` is ``struct tee_shm`` as user space sees it: an id in its
device's table, the context that made it, a reference count (the file
descriptor, each mapping, each call using it as a parameter, OP-TEE's hold on
a supplicant buffer), and the driver buffer behind it (:class:`Shm`).  When
the last reference goes it is released: unregistered from OP-TEE where it
was registered, its pages given back (or unpinned, for a process's own
memory), and its context's reference dropped.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from .errors import TeeErrno
from .shm import Shm

if TYPE_CHECKING:
    from .mm import UserPage
    from .teecore import TeeContext

__all__ = ["ShmKind", "TeeShm", "Idr", "IDR_MAX"]

IDR_MAX = 0x7FFFFFFF  # idr_alloc(..., 1, 0, ...): ids 1 .. INT_MAX


class ShmKind(enum.Enum):
    ALLOC = "alloc"  # TEE_IOC_SHM_ALLOC: guest pages from the pool, mmap-able
    REGISTER = "register"  # TEE_IOC_SHM_REGISTER: the process's own (pinned) pages


@dataclass(eq=False)
class TeeShm:
    """One shared-memory object; see the module docstring."""

    id: int
    ctx: TeeContext  # the context that made it
    kind: ShmKind
    shm: Shm  # the driver's buffer (its cookie is what OP-TEE sees)
    size: int  # what SHM_ALLOC / SHM_REGISTER report back
    user_pages: list[UserPage] = field(default_factory=list)  # pinned (REGISTER)
    refs: int = 1
    released: bool = False

    @property
    def device(self) -> str:
        return self.ctx.dev.name


_T = TypeVar("_T")


class Idr(Generic[_T]):
    """A device's id table: idr_alloc(idr, ptr, 1, 0) hands out the lowest
    free id from 1, so a freed id is reused by the next allocation. An id
    allocated for None is taken but finds nothing (until ``replace``)."""

    def __init__(self) -> None:
        self._objs: dict[int, _T | None] = {}

    def alloc(self, obj: _T | None) -> int:
        n = 1
        while n in self._objs:
            n += 1
        if n > IDR_MAX:
            raise TeeErrno(errno.ENOSPC, "no free id")
        self._objs[n] = obj
        return n

    def replace(self, n: int, obj: _T) -> None:
        self._objs[n] = obj

    def remove(self, n: int) -> None:
        self._objs.pop(n, None)

    def find(self, n: int) -> _T | None:
        return self._objs.get(n)

    def __len__(self) -> int:
        return sum(1 for v in self._objs.values() if v is not None)

    def items(self) -> list[tuple[int, _T | None]]:
        return list(self._objs.items())

    def values(self) -> list[_T]:
        return [v for v in self._objs.values() if v is not None]
