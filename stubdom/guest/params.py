"""Kernel-side parameters (Linux ``struct tee_param``): what the client API hands
the driver and what the driver hands tee-supplicant for an RPC."""

from __future__ import annotations

from dataclasses import dataclass

from .shm import Shm

__all__ = [
    "TEE_IOCTL_PARAM_ATTR_TYPE_NONE",
    "TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT",
    "TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_OUTPUT",
    "TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT",
    "TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT",
    "TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT",
    "TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INOUT",
    "TeeParam",
]

# include/uapi/linux/tee.h (same numbers as the GlobalPlatform TEEC param types)
TEE_IOCTL_PARAM_ATTR_TYPE_NONE = 0
TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT = 1
TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_OUTPUT = 2
TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT = 3
TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT = 5
TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT = 6
TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INOUT = 7

_VALUE = (1, 2, 3)
_MEMREF = (5, 6, 7)


@dataclass(slots=True)
class TeeParam:
    """One parameter.  Values use a/b/c; memrefs use shm/offs/size (``shm``
    None is a NULL memref).  Mutable: the driver writes outputs in place."""

    attr: int = TEE_IOCTL_PARAM_ATTR_TYPE_NONE
    a: int = 0
    b: int = 0
    c: int = 0
    shm: Shm | None = None
    offs: int = 0
    size: int = 0

    @classmethod
    def value(cls, attr: int, a: int = 0, b: int = 0, c: int = 0) -> TeeParam:
        if attr not in _VALUE:
            raise ValueError(f"attr {attr} is not a value type")
        return cls(attr, a, b, c)

    @classmethod
    def memref(cls, attr: int, shm: Shm | None, offs: int, size: int) -> TeeParam:
        if attr not in _MEMREF:
            raise ValueError(f"attr {attr} is not a memref type")
        return cls(attr, shm=shm, offs=offs, size=size)

    @property
    def is_value(self) -> bool:
        return self.attr in _VALUE

    @property
    def is_memref(self) -> bool:
        return self.attr in _MEMREF

    def data(self) -> bytes:
        """The bytes a memref names (empty for a NULL memref)."""
        if self.shm is None:
            return b""
        return self.shm.read(self.offs, self.size)
