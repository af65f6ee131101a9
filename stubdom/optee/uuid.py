"""TA/client UUIDs on the wire and the OPEN_SESSION meta parameters.

Byte order: the 16 octets are the UUID in RFC 4122 / string order (time_low,
time_mid, time_hi_and_version big-endian, then clock_seq and node).  OP-TEE
decodes them that way (``core/tee/uuid.c`` tee_uuid_from_octets) and Linux
copies the 16 raw bytes (``export_uuid``), so ``uuid.UUID.bytes`` is exactly
the wire form.  Read as little-endian u64 words, value.a = octets[0:8] and
value.b = octets[8:16].

OPEN_SESSION (optee_msg.h; OP-TEE ``core/tee/entry_std.c``
get_open_session_meta): params[0] and params[1] both have attr exactly
VALUE_INPUT|META (0x101); params[0].a/b = TA UUID; params[1].a/b = client UUID,
params[1].c = login.  The TA's own params follow from params[2].
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import BadMetaParam, BadUuid, FieldOutOfRange
from .msg import OPTEE_MSG_ATTR_META, OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, MsgParam

__all__ = [
    "META_PARAM_ATTR",
    "UUID_OCTETS_SIZE",
    "OpenSessionMeta",
    "octets_to_uuid",
    "uuid_to_octets",
    "uuid_to_value_words",
    "value_words_to_uuid",
]

UUID_OCTETS_SIZE = 16
# The one attr OP-TEE accepts on both OPEN_SESSION meta params.
META_PARAM_ATTR = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT | OPTEE_MSG_ATTR_META  # 0x101

_TWO_U64 = struct.Struct("<2Q")


def uuid_to_octets(u: uuid.UUID) -> bytes:
    """The 16 wire octets of ``u`` (RFC 4122 byte order)."""
    if not isinstance(u, uuid.UUID):
        raise BadUuid(f"{u!r} is not a uuid.UUID")
    return u.bytes


def octets_to_uuid(b: bytes) -> uuid.UUID:
    """The UUID whose wire octets are ``b`` (exactly 16 bytes)."""
    b = bytes(b)
    if len(b) != UUID_OCTETS_SIZE:
        raise BadUuid(f"UUID octets must be {UUID_OCTETS_SIZE} bytes, got {len(b)}: {b.hex()}")
    return uuid.UUID(bytes=b)


def uuid_to_value_words(u: uuid.UUID) -> tuple[int, int]:
    """(value.a, value.b) carrying ``u`` in a value param."""
    return _TWO_U64.unpack(uuid_to_octets(u))


def value_words_to_uuid(a: int, b: int) -> uuid.UUID:
    """The UUID carried in (value.a, value.b)."""
    return uuid.UUID(bytes=_TWO_U64.pack(a, b))


@dataclass(frozen=True, slots=True)
class OpenSessionMeta:
    """The two meta params of OPEN_SESSION: TA UUID, client UUID and login."""

    ta_uuid: uuid.UUID
    client_uuid: uuid.UUID
    login: int

    def __post_init__(self) -> None:
        if not isinstance(self.ta_uuid, uuid.UUID):
            raise BadUuid(f"ta_uuid {self.ta_uuid!r} is not a uuid.UUID")
        if not isinstance(self.client_uuid, uuid.UUID):
            raise BadUuid(f"client_uuid {self.client_uuid!r} is not a uuid.UUID")
        if not isinstance(self.login, int) or isinstance(self.login, bool) or not 0 <= self.login <= 0xFFFFFFFF:
            raise FieldOutOfRange("login", self.login, 32)

    def to_params(self) -> tuple[MsgParam, MsgParam]:
        ta_a, ta_b = uuid_to_value_words(self.ta_uuid)
        cl_a, cl_b = uuid_to_value_words(self.client_uuid)
        return (
            MsgParam.value(META_PARAM_ATTR, ta_a, ta_b, 0),
            MsgParam.value(META_PARAM_ATTR, cl_a, cl_b, self.login),
        )

    @classmethod
    def from_params(cls, params: Sequence[MsgParam]) -> OpenSessionMeta:
        """Read the meta params from the start of an OPEN_SESSION message's params.

        Raises BadMetaParam when there are fewer than two params, when either
        attr is not exactly 0x101, or when the login in params[1].c does not fit
        32 bits (OP-TEE would truncate it; a truncated login could turn into
        PUBLIC, so it is refused).  The login value itself is not judged here:
        which logins a TEE accepts is policy."""
        if len(params) < 2:
            raise BadMetaParam(
                f"OPEN_SESSION needs 2 meta params, got {len(params)} param(s)"
            )
        for i in (0, 1):
            if params[i].attr != META_PARAM_ATTR:
                raise BadMetaParam(
                    f"OPEN_SESSION params[{i}].attr is {params[i].attr:#x}, "
                    f"expected {META_PARAM_ATTR:#x} (VALUE_INPUT|META)"
                )
        login = params[1].c
        if login > 0xFFFFFFFF:
            raise BadMetaParam(f"OPEN_SESSION login {login:#x} (params[1].c) does not fit 32 bits")
        return cls(
            ta_uuid=value_words_to_uuid(params[0].a, params[0].b),
            client_uuid=value_words_to_uuid(params[1].a, params[1].b),
            login=login,
        )
