"""TAs found early or loaded from the REE: the RPCs of an OPEN_SESSION of an
REE TA (core/kernel/ree_fs_ta.c rpc_load / ree_fs_ta_open / ree_fs_ta_close),
the checks on the image, and the configuration that says which TA is which."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from stubdom.optee import (
    OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
    OPTEE_RPC_CMD_LOAD_TA,
    OPTEE_RPC_CMD_SHM_ALLOC,
    OPTEE_RPC_CMD_SHM_FREE,
    OPTEE_RPC_SHM_TYPE_APPL,
    TA_IMAGE_HEADER_SIZE,
    TEEC_ERROR_BAD_FORMAT,
    TEEC_ERROR_ITEM_NOT_FOUND,
    TEEC_ERROR_SECURITY,
    TEEC_ERROR_SHORT_BUFFER,
    TEEC_ORIGIN_TEE,
    TEEC_ORIGIN_TRUSTED_APP,
    TEEC_SUCCESS,
    BadTaImage,
    build_ta_image,
    parse_ta_image,
    ta_file_name,
    uuid_to_value_words,
)
from stubdom.tee import BadTeeConfig, TeeConfig
from stubdom.tee.tas import DIGEST_UUID, INCREMENT_UUID, STORAGE_UUID, TA_NAMES, WAIT_UUID
from tee_support import setup_guests

UNKNOWN = uuid.UUID("12345678-1234-1234-1234-123456789abc")


@pytest.fixture
def nw(tmp_path: Path):
    machine, _tee, oracle, (world,) = setup_guests(tmp_path, 1)
    yield world
    oracle.assert_clean()
    machine.close()


def rpc_cmds(nw) -> list[tuple[int, ...]]:
    """The RPC CMD requests served (cmd, then each param's attr, a, b, c)."""
    return [e[1:] for e in nw.requests]


@pytest.fixture(autouse=True)
def _requests(monkeypatch):
    """Record every RPC CMD request as the normal world received it."""
    from tee_support import NormalWorld

    inner = NormalWorld.supplicant

    def supplicant(self, arg):
        self.__dict__.setdefault("requests", []).append(
            (None, arg.cmd, *[(p.attr, p.a, p.b, p.c) for p in arg.params]))
        return inner(self, arg)

    monkeypatch.setattr(NormalWorld, "supplicant", supplicant)


def test_default_kinds_and_config_checks() -> None:
    assert TeeConfig().ree_tas == frozenset({"increment", "digest", "storage"})
    assert {n: TeeConfig().ta_kind(n) for n in TA_NAMES} == {
        "increment": "ree", "digest": "ree", "storage": "ree", "wait": "early"}
    with pytest.raises(BadTeeConfig, match="'hello' is no TA of the model"):
        TeeConfig(ree_tas=frozenset({"hello"}))
    with pytest.raises(BadTeeConfig, match="must be a frozenset"):
        TeeConfig(ree_tas={"increment"})


def test_an_early_ta_opens_without_an_rpc(nw) -> None:
    r, arg = nw.open_session(WAIT_UUID)
    assert (r[0], arg.ret) == (0, TEEC_SUCCESS)
    assert getattr(nw, "requests", []) == [] and nw.rpc_log == []


def test_every_open_of_an_ree_ta_loads_it(nw) -> None:
    image = nw.ta_images[INCREMENT_UUID]
    a, b = uuid_to_value_words(INCREMENT_UUID)
    for _ in range(2):  # multi-instance: every session loads its own instance
        nw.requests = []
        r, arg = nw.open_session(INCREMENT_UUID)
        assert (arg.ret, arg.ret_origin) == (TEEC_SUCCESS, TEEC_ORIGIN_TRUSTED_APP)
        (size_q, alloc, load, free) = rpc_cmds(nw)
        # 1. LOAD_TA: the UUID, and an output memref with no buffer
        assert size_q == (OPTEE_RPC_CMD_LOAD_TA, (OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, a, b, 0),
                          (OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, 0, 0, 0))
        # 2. SHM_ALLOC of type APPL, the size the normal world gave, 8-byte aligned
        assert alloc == (OPTEE_RPC_CMD_SHM_ALLOC, (OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, OPTEE_RPC_SHM_TYPE_APPL,
                                                   len(image), 8))
        # 3. LOAD_TA into that buffer (a registered-memory reference to it)
        cookie = load[2][3]
        assert load == (OPTEE_RPC_CMD_LOAD_TA, (OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, a, b, 0),
                        (OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, 0, len(image), cookie))
        # 4. SHM_FREE of it once the TA is in
        assert free == (OPTEE_RPC_CMD_SHM_FREE, (OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, OPTEE_RPC_SHM_TYPE_APPL,
                                                 cookie, 0))
    assert nw.shm == {}


def test_a_ta_nobody_has_is_item_not_found_after_one_load_rpc(nw) -> None:
    nw.requests = []
    _, arg = nw.open_session(UNKNOWN)
    assert (arg.ret, arg.ret_origin, arg.session) == (TEEC_ERROR_ITEM_NOT_FOUND, TEEC_ORIGIN_TEE, 0)
    assert [c[0] for c in rpc_cmds(nw)] == [OPTEE_RPC_CMD_LOAD_TA]


def _corrupt(image: bytes, at: int) -> bytes:
    return image[:at] + bytes([image[at] ^ 1]) + image[at + 1:]


@pytest.mark.parametrize("how", ["body", "digest", "magic", "uuid", "truncated", "header", "garbage"])
def test_a_bad_image_is_refused_with_security_and_its_buffer_freed(nw, how: str) -> None:
    good = nw.ta_images[DIGEST_UUID]
    bad = {
        "body": _corrupt(good, TA_IMAGE_HEADER_SIZE + 10),
        "digest": _corrupt(good, 40),
        "magic": _corrupt(good, 0),
        "uuid": build_ta_image(INCREMENT_UUID, "digest", size=len(good)),
        "truncated": good[:-1],
        "header": good[:TA_IMAGE_HEADER_SIZE - 1],
        "garbage": bytes(range(256)) * 4,
    }[how]
    nw.ta_images[DIGEST_UUID] = bad
    nw.requests = []
    _, arg = nw.open_session(DIGEST_UUID)
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_SECURITY, TEEC_ORIGIN_TEE)
    cmds = [c[0] for c in rpc_cmds(nw)]
    assert cmds == [OPTEE_RPC_CMD_LOAD_TA, OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_LOAD_TA, OPTEE_RPC_CMD_SHM_FREE]
    assert nw.shm == {}
    nw.ta_images[DIGEST_UUID] = good
    assert nw.open_session(DIGEST_UUID)[1].ret == TEEC_SUCCESS


def test_an_image_that_grew_between_the_two_loads_is_short_buffer(nw) -> None:
    image = nw.ta_images[STORAGE_UUID]
    inner = nw.load_ta
    calls = []

    def load_ta(params):
        calls.append(1)
        if len(calls) == 2:  # the file changed under tee-supplicant
            nw.ta_images[STORAGE_UUID] = image + bytes(100)
        return inner(params)

    nw.load_ta = load_ta
    nw.requests = []
    _, arg = nw.open_session(STORAGE_UUID)
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_SHORT_BUFFER, TEEC_ORIGIN_TEE)
    assert rpc_cmds(nw)[-1][0] == OPTEE_RPC_CMD_SHM_FREE


def test_a_valid_image_of_a_ta_the_model_does_not_implement(nw) -> None:
    nw.ta_images[UNKNOWN] = build_ta_image(UNKNOWN, "stranger")
    _, arg = nw.open_session(UNKNOWN)
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_BAD_FORMAT, TEEC_ORIGIN_TEE)


def test_an_early_configured_ta_is_never_asked_for(tmp_path: Path) -> None:
    machine, _tee, oracle, (nw,) = setup_guests(tmp_path, 1, config=TeeConfig(ree_tas=frozenset({"digest"})))
    nw.ta_images.clear()  # nothing in the TA directory
    assert nw.open_session(INCREMENT_UUID)[1].ret == TEEC_SUCCESS
    assert nw.open_session(DIGEST_UUID)[1].ret == TEEC_ERROR_ITEM_NOT_FOUND
    oracle.assert_clean()
    machine.close()


def test_image_format() -> None:
    image = build_ta_image(INCREMENT_UUID, "increment", size=1000)
    assert len(image) == 1000 and image[:4] == b"SDTA"
    assert image[8:24] == INCREMENT_UUID.bytes  # RFC 4122 octets, as LOAD_TA carries the UUID
    hdr = parse_ta_image(image, INCREMENT_UUID)
    assert (hdr.uuid, hdr.body_size) == (INCREMENT_UUID, 1000 - TA_IMAGE_HEADER_SIZE)
    assert ta_file_name(INCREMENT_UUID) == "8aaaf200-2450-11e4-abe2-0002a5d5c51b.ta"
    with pytest.raises(BadTaImage, match=r"TA image uuid = '8aaaf200-2450-11e4-abe2-0002a5d5c51b': "
                                         r"the image was asked for TA a0bd9563"):
        parse_ta_image(image, DIGEST_UUID)
    with pytest.raises(BadTaImage, match=r"TA image body_size = 936: the image has 935 bytes after its header"):
        parse_ta_image(image[:-1], INCREMENT_UUID)
    with pytest.raises(BadTaImage, match=r"TA image size = 3: shorter than the 64-byte header"):
        parse_ta_image(b"abc", INCREMENT_UUID)
    with pytest.raises(ValueError, match="cannot hold"):
        build_ta_image(INCREMENT_UUID, "increment", size=70)
