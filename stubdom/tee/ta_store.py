"""Finding the TA an OPEN_SESSION names: ldelf's TA stores.

OP-TEE looks a user TA up in its TA stores in order (``ldelf_syscall_open_bin``):
the early TAs linked into the OP-TEE binary (``core/kernel/early_ta.c``), then
the REE file system (``core/kernel/ree_fs_ta.c``), which asks tee-supplicant
for the image:

1. OPTEE_RPC_CMD_LOAD_TA with the UUID and a NULL output memref: the normal
   world answers the image's size (or ITEM_NOT_FOUND);
2. OPTEE_RPC_CMD_SHM_ALLOC of type APPL and that size (``thread_rpc_alloc_payload``);
3. OPTEE_RPC_CMD_LOAD_TA again, into that buffer;
4. the image is checked (``ree_fs_ta_open``: anything that does not verify is
   TEE_ERROR_SECURITY) and read;
5. OPTEE_RPC_CMD_SHM_FREE of the buffer (``ree_fs_ta_close``, or the error path).

Every TA of the model is multi-instance (TA_FLAGS 0, as optee_examples'
hello_world): each session gets its own instance, so every OPEN_SESSION of an
REE TA loads it again; TA_FLAG_SINGLE_INSTANCE and its locks are not
modelled.  The image format is ``stubdom.optee.taimage``; a valid image for a
UUID the model has no implementation of is TEE_ERROR_BAD_FORMAT (the model
cannot run what it does not implement; OP-TEE would run the ELF).
"""

from __future__ import annotations

import uuid
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from stubdom.optee.errors import BadTaImage
from stubdom.optee.rpc import OPTEE_RPC_CMD_LOAD_TA, OPTEE_RPC_SHM_TYPE_APPL
from stubdom.optee.taimage import parse_ta_image
from stubdom.optee.teec import (
    TEE_ERROR_BAD_FORMAT,
    TEE_ERROR_OUT_OF_MEMORY,
    TEE_ERROR_SECURITY,
    TEE_SUCCESS,
)
from stubdom.optee.uuid import uuid_to_value_words

from .thread import RpcParam, RpcReply, RpcRequest, Thread

if TYPE_CHECKING:  # pragma: no cover
    from stubdom.config.tee import TeeConfig

    from .tas.ta import TrustedApp

__all__ = ["find_ta", "load_ta_image"]

# a step of the secure world driven through RPCs: yields each RPC request, is
# sent its reply; what it returns differs per function (its docstring says), as
# for tas.ta.TaGen
Gen = Generator[RpcRequest, RpcReply, Any]


def load_ta_image(t: Thread, ta_uuid: uuid.UUID) -> Gen:
    """rpc_load + ree_fs_ta_open's checks + ree_fs_ta_close: (result, image
    bytes or None).  The buffer is always given back once it was allocated."""
    a, b = uuid_to_value_words(ta_uuid)
    res, out = yield from t.rpc_cmd(OPTEE_RPC_CMD_LOAD_TA, [
        RpcParam.value_in(a, b, 0), RpcParam.memref(1, None, 0, 0)])
    if res != TEE_SUCCESS:
        return res, None
    size = out[1].size
    mobj = yield from t.alloc_payload(size, OPTEE_RPC_SHM_TYPE_APPL)
    if mobj is None:
        return TEE_ERROR_OUT_OF_MEMORY, None
    res, _ = yield from t.rpc_cmd(OPTEE_RPC_CMD_LOAD_TA, [
        RpcParam.value_in(a, b, 0), RpcParam.memref(1, mobj, 0, size)])
    image = None
    if res == TEE_SUCCESS:
        assert t.ns is not None
        image = t.ns.read(mobj, 0, size, "TA image")
        try:
            parse_ta_image(image, ta_uuid)
        except BadTaImage:
            res, image = TEE_ERROR_SECURITY, None
    yield from t.free_payload(OPTEE_RPC_SHM_TYPE_APPL, mobj.cookie)
    return res, image


def find_ta(t: Thread, config: TeeConfig, tas: dict[uuid.UUID, TrustedApp], ta_uuid: uuid.UUID) -> Gen:
    """The TA for ``ta_uuid``: an early one at once, otherwise what the REE
    loads.  (result, TA or None); failures are origin TEE."""
    ta = tas.get(ta_uuid)
    if ta is not None and config.ta_kind(ta.name) == "early":
        return TEE_SUCCESS, ta
    res, _image = yield from load_ta_image(t, ta_uuid)
    if res != TEE_SUCCESS:
        return res, None
    if ta is None:
        return TEE_ERROR_BAD_FORMAT, None
    return TEE_SUCCESS, ta
