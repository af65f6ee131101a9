"""The guest driver against the real OP-TEE model, through a pass-through trap
written here (stamp a7 = domid + 1 and forward: all the 2017 RFC did) on a
direct-mapped hardware domain."""

from __future__ import annotations

import hashlib

import pytest

from stubdom.guest import (
    IN,
    INOUT,
    OUT,
    Context,
    OpteeDriver,
    PageAllocator,
    RegisteredMemref,
    Supplicant,
    TeecError,
    TempMemref,
    Value,
)
from stubdom.optee import (
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
    TEEC_ERROR_SHORT_BUFFER,
    TEEC_MEM_INPUT,
)
from stubdom.tee import REQUIRED_SEC_CAPS, IsolationOracle, OpteeModel, TeeConfig
from stubdom.tee.tas import DIGEST_CMD_SHA256, DIGEST_UUID, INCREMENT_UUID, TA_INCREMENT_CMD_INC_VALUE
from stubdom.xen import Machine

HWDOM = 0

CAPS = {
    "dynamic+rpc_arg": REQUIRED_SEC_CAPS | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM | OPTEE_SMC_SEC_CAP_RPC_ARG,
    "dynamic": REQUIRED_SEC_CAPS | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    "reserved": REQUIRED_SEC_CAPS | OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    "reserved+rpc_arg": REQUIRED_SEC_CAPS | OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM | OPTEE_SMC_SEC_CAP_RPC_ARG,
}


@pytest.fixture(params=sorted(CAPS))
def world(request, tmp_path):
    machine = Machine.create(tmp_path / "machine", nr_frames=16384)
    hwdom = machine.create_domain(HWDOM, nr_pages=2048, hwdom=True, direct_mapped=True)
    hwdom.map_static_shm()
    oracle = IsolationOracle(machine, require_pins=False)
    tee = OpteeModel(machine, TeeConfig(sec_caps=CAPS[request.param]), oracle)
    assert tee.smc((OPTEE_SMC_VM_CREATED, HWDOM + 1, 0, 0, 0, 0, 0, 0))[0] == OPTEE_SMC_RETURN_OK
    stamped = []

    def trap(vcpu: int, regs: tuple[int, ...]) -> tuple[int, ...]:
        stamped.append(regs)
        return tee.smc(regs[:7] + (HWDOM + 1,))

    yield machine, hwdom, tee, oracle, trap
    tee.smc((OPTEE_SMC_VM_DESTROYED, HWDOM + 1, 0, 0, 0, 0, 0, 0))
    machine.close()


def test_probe_open_invoke_close(world):
    machine, hwdom, tee, oracle, trap = world
    drv = OpteeDriver(trap, hwdom, nr_vcpus=2, allocator=PageAllocator.for_domain(hwdom, seed=2),
                      supplicant=Supplicant())
    info = drv.probe()
    assert info.dynamic_shm == bool(tee_caps(tee) & OPTEE_SMC_SEC_CAP_DYNAMIC_SHM)
    with Context(drv) as ctx:
        session = ctx.open_session(INCREMENT_UUID, vcpu=1)
        out = session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(41, 0, INOUT)])
        assert out[0].a == 42
        session.close()
    drv.shutdown()
    assert drv.pages.allocated_count == 0 and drv.live_shms == []
    oracle.assert_clean()


def test_digest_of_scattered_temp_and_registered_buffers(world):
    machine, hwdom, tee, oracle, trap = world
    drv = OpteeDriver(trap, hwdom, allocator=PageAllocator.for_domain(hwdom, seed=3), supplicant=Supplicant())
    drv.probe()
    data = bytes((i * 131) % 256 for i in range(3 * 4096 + 77))
    with Context(drv) as ctx:
        session = ctx.open_session(DIGEST_UUID)
        out = session.invoke(DIGEST_CMD_SHA256, [TempMemref(data, IN), TempMemref(size=32, direction=OUT)])
        assert out[1].data == hashlib.sha256(data).digest()
        src = ctx.allocate_shared_memory(len(data), TEEC_MEM_INPUT)
        src.write(0, data)
        dst = ctx.allocate_shared_memory(64)
        out = session.invoke(DIGEST_CMD_SHA256, [RegisteredMemref(src), RegisteredMemref(dst, 16, 32, OUT)])
        assert dst.read(16, 32) == hashlib.sha256(data).digest()
        with pytest.raises(TeecError) as e:
            session.invoke(DIGEST_CMD_SHA256, [TempMemref(data, IN), TempMemref(size=8, direction=OUT)])
        assert e.value.ret == TEEC_ERROR_SHORT_BUFFER and e.value.outputs[1].size == 32
    drv.shutdown()
    assert drv.pages.allocated_count == 0
    oracle.assert_clean()


def tee_caps(tee) -> int:
    return tee.smc((0xB2000009, 0, 0, 0, 0, 0, 0, HWDOM + 1))[1]


def test_storage_round_trip_through_the_supplicant(world, tmp_path):
    from stubdom.guest import DirectoryStore
    from stubdom.tee.tas import STORAGE_CMD_DELETE, STORAGE_CMD_READ, STORAGE_CMD_WRITE, STORAGE_UUID

    machine, hwdom, tee, oracle, trap = world
    store = DirectoryStore(tmp_path / "tee-dom0")
    drv = OpteeDriver(
        trap, hwdom, allocator=PageAllocator.for_domain(hwdom, seed=4),
        supplicant=Supplicant(store),
    )
    drv.probe()
    blob = bytes(range(256)) * 40  # 10 KiB: several FS transfers
    with Context(drv) as ctx:
        s = ctx.open_session(STORAGE_UUID)
        s.invoke(STORAGE_CMD_WRITE, [TempMemref(b"obj-1", IN), TempMemref(blob, IN)])
        # OP-TEE's REE FS: the directory file and the object's hash-tree file
        assert sorted(p.name for p in store.root.iterdir()) == ["0", "dirf.db"]
        out = s.invoke(STORAGE_CMD_READ, [TempMemref(b"obj-1", IN), TempMemref(size=len(blob), direction=OUT)])
        assert out[1].data == blob
        s.invoke(STORAGE_CMD_DELETE, [TempMemref(b"obj-1", IN)])
        with pytest.raises(TeecError) as e:
            s.invoke(STORAGE_CMD_READ, [TempMemref(b"obj-1", IN), TempMemref(size=16, direction=OUT)])
        assert e.value.ret == 0xFFFF0008  # TEEC_ERROR_ITEM_NOT_FOUND
    drv.shutdown()
    assert drv.pages.allocated_count == 0 and drv.supplicant.open_fds == frozenset()
    oracle.assert_clean()
