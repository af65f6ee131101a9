"""The digest TA: SHA-256 of an input memref into an output memref.

DIGEST_CMD_SHA256 takes (MEMREF_INPUT data, MEMREF_OUTPUT digest, NONE,
NONE).  An output smaller than 32 bytes gets TEE_ERROR_SHORT_BUFFER with its
size set to 32, as GP's TEE_DigestDoFinal reports the needed length; other
param types are TEE_ERROR_BAD_PARAMETERS.  A NULL input memref hashes the
empty message.
"""

from __future__ import annotations

import hashlib
import uuid

from stubdom.optee.teec import TEE_ERROR_BAD_PARAMETERS, TEE_ERROR_SHORT_BUFFER, TEE_SUCCESS

from .ta import (
    TEE_PARAM_TYPE_MEMREF_INPUT,
    TEE_PARAM_TYPE_MEMREF_OUTPUT,
    TEE_PARAM_TYPE_NONE,
    TEE_PARAM_TYPES,
    StatelessTa,
    TaContext,
    TaGen,
    TaParam,
    param_types,
)

__all__ = ["DIGEST_UUID", "DIGEST_CMD_SHA256", "SHA256_SIZE", "DigestTa"]

DIGEST_UUID = uuid.UUID("a0bd9563-24c5-41c0-9d22-36aa5bad6745")
DIGEST_CMD_SHA256 = 0
SHA256_SIZE = 32

_SHA256 = TEE_PARAM_TYPES(TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_MEMREF_OUTPUT, TEE_PARAM_TYPE_NONE,
                          TEE_PARAM_TYPE_NONE)


class DigestTa(StatelessTa):
    uuid = DIGEST_UUID
    name = "digest"

    def invoke(self, ctx: TaContext, cmd: int, params: list[TaParam]) -> TaGen:
        if cmd != DIGEST_CMD_SHA256 or param_types(params) != _SHA256:
            return TEE_ERROR_BAD_PARAMETERS
        out = params[1]
        if out.size < SHA256_SIZE:
            out.size = SHA256_SIZE
            return TEE_ERROR_SHORT_BUFFER
        data = ctx.read_memref(params[0], "digest input")
        ctx.write_memref(out, hashlib.sha256(data).digest(), "digest output")
        out.size = SHA256_SIZE
        return TEE_SUCCESS
        yield

