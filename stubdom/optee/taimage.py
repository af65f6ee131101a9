"""The TA image: what tee-supplicant hands OP-TEE for OPTEE_RPC_CMD_LOAD_TA.

A real OP-TEE loads a signed ELF (``<uuid>.ta``: a ``struct shdr`` signed
header, optionally a bootstrap header, then the ELF; ``core/kernel/ree_fs_ta.c``
ree_fs_ta_open checks the signature, the sizes and, for bootstrap images, the
UUID, and answers TEE_ERROR_SECURITY to anything that does not verify).  The
simulated secure world runs its TAs as Python, so its images are a format of
this project's own, carrying what the checks need — the TA's UUID and a
digest of the body — and nothing else::

    offset  size  field
    0       4     magic        "SDTA"
    4       4     version      1 (little-endian u32)
    8       16    uuid         the TA's UUID as 16 octets, RFC 4122 order
                               (the order OPEN_SESSION and LOAD_TA carry it in)
    24      8     body_size    bytes after the header (little-endian u64)
    32      32    digest       SHA-256 of the body
    64      ...   body         stands for the TA's ELF; opaque

There is no signature: the digest catches a corrupted or truncated image, not
a forged one (OP-TEE verifies an RSA/ECDSA signature over its header,
``shdr_verify_signature``).  Files are named as tee-supplicant looks them up
(optee_client ``tee-supplicant/src/teec_ta_load.c`` try_load_secure_module):
``<uuid>.ta`` in the TA directory.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass

from .errors import BadTaImage

__all__ = [
    "TA_IMAGE_MAGIC",
    "TA_IMAGE_VERSION",
    "TA_IMAGE_HEADER_SIZE",
    "DEFAULT_TA_IMAGE_SIZE",
    "TaImageHeader",
    "build_ta_image",
    "parse_ta_image",
    "ta_file_name",
]

TA_IMAGE_MAGIC = b"SDTA"
TA_IMAGE_VERSION = 1
_HEADER = struct.Struct("<4sI16sQ32s")
TA_IMAGE_HEADER_SIZE = _HEADER.size  # 64
# Size of the images build_ta_image makes unless told otherwise: 32 KiB, eight
# pages.  An order of magnitude of a small stripped and signed TA (an
# optee_examples TA is tens of KiB), not a measurement of one; it decides how
# many pages the SHM_ALLOC of type APPL for LOAD_TA spans (and a mediator pins),
# so pass the size of your own TAs when it matters.
DEFAULT_TA_IMAGE_SIZE = 32 * 1024


@dataclass(frozen=True, slots=True)
class TaImageHeader:
    """A header that verified: whose TA it is and what its body is."""

    uuid: uuid.UUID
    body_size: int
    digest: bytes


def ta_file_name(ta_uuid: uuid.UUID) -> str:
    """The file tee-supplicant opens for ``ta_uuid``: ``<uuid>.ta``."""
    if not isinstance(ta_uuid, uuid.UUID):
        raise TypeError(f"{ta_uuid!r} is not a uuid.UUID")
    return f"{ta_uuid}.ta"


def build_ta_image(ta_uuid: uuid.UUID, name: str, *, size: int = DEFAULT_TA_IMAGE_SIZE) -> bytes:
    """A valid image of ``size`` bytes for the TA ``ta_uuid``; the body names
    the TA and is padded with zeros."""
    if not isinstance(ta_uuid, uuid.UUID):
        raise TypeError(f"{ta_uuid!r} is not a uuid.UUID")
    label = f"stubdom-teed TA {name} {ta_uuid}\n".encode()
    if size < TA_IMAGE_HEADER_SIZE + len(label):
        raise ValueError(f"a {size}-byte image cannot hold the {TA_IMAGE_HEADER_SIZE}-byte header "
                         f"and the {len(label)}-byte label of TA {name!r}")
    body = label + bytes(size - TA_IMAGE_HEADER_SIZE - len(label))
    header = _HEADER.pack(TA_IMAGE_MAGIC, TA_IMAGE_VERSION, ta_uuid.bytes, len(body),
                          hashlib.sha256(body).digest())
    return header + body


def parse_ta_image(data: bytes, expected_uuid: uuid.UUID) -> TaImageHeader:
    """Check ``data`` as OP-TEE checks a TA it loads for ``expected_uuid``;
    raises :class:`BadTaImage` naming the first thing that is wrong."""
    data = bytes(data)
    if len(data) < TA_IMAGE_HEADER_SIZE:
        raise BadTaImage("size", len(data), f"shorter than the {TA_IMAGE_HEADER_SIZE}-byte header")
    magic, version, octets, body_size, digest = _HEADER.unpack_from(data, 0)
    if magic != TA_IMAGE_MAGIC:
        raise BadTaImage("magic", magic, f"not {TA_IMAGE_MAGIC!r}")
    if version != TA_IMAGE_VERSION:
        raise BadTaImage("version", version, f"not {TA_IMAGE_VERSION}")
    if body_size != len(data) - TA_IMAGE_HEADER_SIZE:
        raise BadTaImage("body_size", body_size,
                         f"the image has {len(data) - TA_IMAGE_HEADER_SIZE} bytes after its header")
    found = uuid.UUID(bytes=octets)
    if found != expected_uuid:
        raise BadTaImage("uuid", str(found), f"the image was asked for TA {expected_uuid}")
    if hashlib.sha256(data[TA_IMAGE_HEADER_SIZE:]).digest() != digest:
        raise BadTaImage("digest", digest.hex(), "the body does not hash to it")
    return TaImageHeader(found, body_size, digest)
