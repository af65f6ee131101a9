"""Machine model: constants, geometry, files and layouts, machine addresses,
attach, and the errors of the machine-level API."""

from __future__ import annotations

import os
import struct

import pytest

import stubdom.xen as xen
from stubdom.xen import (
    DOMID_INVALID,
    DOMID_XEN,
    GUEST_RAM0_BASE,
    PAGE_SIZE,
    BadDomainConfig,
    BadDomid,
    BadMachineConfig,
    DomainExists,
    FrameOutOfRange,
    FrameState,
    HwdomExists,
    Machine,
    MachineAddressOutOfRange,
    MachineExists,
    MachineFormatError,
    NoSuchDomain,
    NotMapped,
    OutOfFrames,
    P2mType,
)

NR_FRAMES = 16384  # 64 MiB at 0x40000000: holds the default static shm at 0x42000000


@pytest.fixture
def machine(tmp_path):
    with Machine.create(tmp_path / "m", nr_frames=NR_FRAMES, seed=7) as m:
        yield m


# -- constants: the real values ----------------------------------------------------------


def test_constants_are_xens():
    # xen/include/public/xen.h
    assert (xen.DOMID_FIRST_RESERVED, xen.DOMID_SELF, xen.DOMID_IO, xen.DOMID_XEN,
            xen.DOMID_COW, xen.DOMID_INVALID, xen.DOMID_IDLE) == (
        0x7FF0, 0x7FF0, 0x7FF1, 0x7FF2, 0x7FF3, 0x7FF4, 0x7FFF)
    # xen/include/public/arch-arm.h
    assert (xen.GUEST_RAM0_BASE, xen.GUEST_RAM0_SIZE) == (0x40000000, 0xC0000000)
    assert (xen.PAGE_SHIFT, xen.PAGE_SIZE) == (12, 4096)
    assert 0x40001234 & xen.PAGE_MASK == 0x40001000
    assert xen.INVALID_MFN == 0xFFFF_FFFF_FFFF_FFFF
    # OP-TEE core/arch/arm/plat-vexpress/conf.mk, qemu_armv8a
    assert (xen.OPTEE_SHMEM_START, xen.OPTEE_SHMEM_SIZE) == (0x42000000, 0x200000)


def test_p2m_types_keep_xens_names_and_values():
    # xen/arch/arm/include/asm/p2m.h, p2m_type_t
    assert [(t.name, t.value) for t in P2mType] == [
        ("p2m_invalid", 0), ("p2m_ram_rw", 1), ("p2m_ram_ro", 2), ("p2m_mmio_direct_dev", 3)]


def test_exports():
    for name in xen.__all__:
        assert hasattr(xen, name), name
    for name in ("Machine", "Domain", "StaticShm", "P2mEntry", "P2mType", "FrameState",
                 "NotMapped", "WrongP2mType", "BadIpa", "NotOwner", "PageNotPinned"):
        assert name in xen.__all__


# -- geometry and creation ---------------------------------------------------------------


def test_geometry_and_static_shm_reserved_to_xen(machine):
    assert machine.ram_base == 0x40000000
    assert machine.nr_frames == NR_FRAMES
    assert machine.first_mfn == 0x40000
    assert machine.last_mfn == 0x40000 + NR_FRAMES - 1
    assert machine.ram_end == 0x44000000
    shm = machine.static_shm
    assert (shm.base, shm.size) == (0x42000000, 0x200000)
    assert shm.contains(0x42000000, 0x200000)
    assert shm.contains(0x421FF000, 0x1000)
    assert not shm.contains(0x421FF000, 0x1001)
    assert not shm.contains(0x41FFFFFF, 2)
    for mfn in shm.mfns():
        assert machine.frame_owner(mfn) == DOMID_XEN
        assert machine.frame_state(mfn) is FrameState.ALLOCATED
        assert machine.frame_refcount(mfn) == 0
    assert machine.frame_owner(0x42200) == DOMID_INVALID
    assert machine.frame_state(0x42200) is FrameState.FREE
    assert machine.free_frames == NR_FRAMES - 512


def test_files_exist_and_ram_is_sparse(machine):
    names = sorted(os.listdir(machine.path))
    assert names == ["domains", "frametable", "lock", "p2m", "ram"]
    st = os.stat(machine.path / "ram")
    assert st.st_size == NR_FRAMES * PAGE_SIZE
    assert st.st_blocks * 512 < st.st_size // 4  # not written out


def test_create_refuses_a_used_directory(tmp_path, machine):
    with pytest.raises(MachineExists, match=str(machine.path)):
        Machine.create(machine.path, nr_frames=NR_FRAMES)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "junk").write_text("")
    with pytest.raises(MachineExists):
        Machine.create(tmp_path / "x", nr_frames=NR_FRAMES)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"nr_frames": 0}, "nr_frames = 0x0"),
        ({"nr_frames": -5}, "nr_frames = -0x5"),
        ({"nr_frames": 16, "ram_base": 0x40000800}, "ram_base = 0x40000800"),
        ({"nr_frames": 4096}, "static_shm_base = 0x42000000"),  # 16 MiB: region outside RAM
        ({"nr_frames": 16384, "static_shm_size": 0}, "static_shm_size = 0x0"),
        ({"nr_frames": 16384, "static_shm_base": 0x42000010}, "not page aligned"),
        ({"nr_frames": 16384, "static_shm_base": 0x3FFFF000}, "static_shm_base = 0x3ffff000"),
    ],
)
def test_bad_machine_config(tmp_path, kwargs, text):
    with pytest.raises(BadMachineConfig, match=text):
        Machine.create(tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_attach_read_by_fd_reads_and_writes_the_same_memory(machine):
    """read_by_fd (the stub domain's attach): reads by pread see what a
    process writes through its mapping and the other way round; the same
    checks refuse the same accesses."""
    d5 = machine.create_domain(5, nr_pages=3)
    with Machine.attach(machine.path, read_by_fd=True) as other:
        seen = other.domain(5)
        # a guest write across a page boundary, read back across it
        d5.write(GUEST_RAM0_BASE + 0xFFC, b"12345678")
        assert seen.read(GUEST_RAM0_BASE + 0xFFC, 8) == b"12345678"
        assert seen.read(GUEST_RAM0_BASE + 0xFFE, 2) == b"34"
        seen.write(GUEST_RAM0_BASE + 0x1FFE, memoryview(b"abcd"))
        assert d5.read(GUEST_RAM0_BASE + 0x1FFE, 4) == b"abcd"
        with pytest.raises(NotMapped):  # past the domain's RAM: nothing written
            seen.write(GUEST_RAM0_BASE + 0x2FFE, b"xyzw")
        assert d5.read(GUEST_RAM0_BASE + 0x2FFE, 2) == bytes(2)
        # machine addresses
        maddr = d5.translate(GUEST_RAM0_BASE, write=False)
        other.write_machine(maddr + 16, bytearray(b"shadow"))
        assert machine.read_machine(maddr + 16, 6) == b"shadow"
        assert other.read_machine(maddr + 0xFFC, 4) == b"1234"
        with pytest.raises(MachineAddressOutOfRange):
            other.read_machine(other.ram_end - 2, 4)
        with pytest.raises(MachineAddressOutOfRange):
            other.write_machine(other.ram_end - 2, b"1234")
        with other.page_view(maddr >> 12) as view:  # page_view still maps
            assert bytes(view[16:22]) == b"shadow"


def test_attach_errors(tmp_path, machine):
    with pytest.raises(MachineFormatError, match="lock file missing"):
        Machine.attach(tmp_path)
    (machine.path / "frametable").rename(tmp_path / "ft")
    with pytest.raises(MachineFormatError, match="frame table missing"):
        Machine.attach(machine.path)
    (tmp_path / "ft").rename(machine.path / "frametable")
    with open(machine.path / "domains", "r+b") as f:
        f.write(b"garbage!")
    with pytest.raises(MachineFormatError, match="not a domain registry"):
        Machine.attach(machine.path)


# -- machine addresses ---------------------------------------------------------------------


def test_read_write_machine(machine):
    machine.write_machine(0x40000FFE, b"abcd")
    assert machine.read_machine(0x40000FFE, 4) == b"abcd"
    assert machine.read_machine(0x43FFFFFC, 4) == bytes(4)
    assert machine.read_machine(0x43FFFFFC, 0) == b""
    with machine.page_view(0x40000) as view:
        assert bytes(view[0xFFE:]) == b"ab"
    with machine.page_view(0x40001) as view:
        assert bytes(view[:2]) == b"cd"
        view[2] = 0x7A
    assert machine.read_machine(0x40001002, 1) == b"z"


@pytest.mark.parametrize(
    ("maddr", "length", "text"),
    [
        (0x3FFFFFFF, 1, "0x3fffffff"),
        (0x43FFFFFF, 2, "0x43ffffff"),
        (0x44000000, 0, "0x44000000"),
        (0x40000000, -1, "0x40000000"),
        (0x1_4000_0000, 4, "0x140000000"),
    ],
)
def test_machine_address_out_of_range(machine, maddr, length, text):
    with pytest.raises(MachineAddressOutOfRange, match=text):
        machine.read_machine(maddr, length)
    if length > 0:
        with pytest.raises(MachineAddressOutOfRange, match=text):
            machine.write_machine(maddr, bytes(length))


@pytest.mark.parametrize("mfn", [0x3FFFF, 0x44000, -1, 0])
def test_frame_out_of_range(machine, mfn):
    text = f"mfn {mfn:#x}"
    for call in (machine.frame_owner, machine.frame_refcount, machine.frame_state,
                 machine.put_page, machine.page_view):
        with pytest.raises(FrameOutOfRange, match=text):
            call(mfn)
    with pytest.raises(FrameOutOfRange, match=text):
        machine.get_page(mfn, 0)
    with pytest.raises(FrameOutOfRange, match="0x3ffff"):
        machine.get_pages([0x40000, 0x3FFFF], 0)


# -- domains at machine level ------------------------------------------------------------------


@pytest.mark.parametrize("domid", [-1, 0x7FF0, DOMID_XEN, 1.0, "1"])
def test_bad_domid(machine, domid):
    with pytest.raises(BadDomid, match=repr(domid).replace(".", r"\.")):
        machine.create_domain(domid, nr_pages=1)
    with pytest.raises(BadDomid):
        machine.domain(domid)
    with pytest.raises(BadDomid):
        machine.destroy_domain(domid)


def test_domain_exists_hwdom_exists_no_such_domain(machine):
    machine.create_domain(0, nr_pages=16, hwdom=True, direct_mapped=True)
    machine.create_domain(3, nr_pages=4)
    with pytest.raises(DomainExists, match="d3 already exists: live"):
        machine.create_domain(3, nr_pages=4)
    with pytest.raises(HwdomExists, match="d0 already is"):
        machine.create_domain(4, nr_pages=4, hwdom=True)
    with pytest.raises(NoSuchDomain, match="d9"):
        machine.domain(9)
    with pytest.raises(NoSuchDomain, match="d9"):
        machine.destroy_domain(9)
    with pytest.raises(BadDomainConfig, match="nr_pages = 0"):
        machine.create_domain(5, nr_pages=0)
    assert machine.domains() == [0, 3]
    machine.destroy_domain(0)
    machine.create_domain(4, nr_pages=4, hwdom=True)  # the hwdom slot is free again
    assert machine.domains() == [3, 4]


def test_out_of_frames_creates_nothing(machine):
    free = machine.free_frames
    before = sorted(os.listdir(machine.path / "p2m"))
    with pytest.raises(OutOfFrames, match=f"{free + 1} requested, {free} free"):
        machine.create_domain(1, nr_pages=free + 1)
    with pytest.raises(OutOfFrames):
        machine.create_domain(2, nr_pages=free + 1, hwdom=True, direct_mapped=True)
    assert machine.free_frames == free
    assert machine.domains() == []
    assert sorted(os.listdir(machine.path / "p2m")) == before
    assert machine.pinned_frames() == {}
    # And the whole of it can still be had.
    dom = machine.create_domain(1, nr_pages=free)
    assert machine.free_frames == 0
    assert dom.nr_pages == free


def test_attach_sees_domains_created_later(machine):
    with Machine.attach(machine.path) as other:
        assert other.domains() == []
        d5 = machine.create_domain(5, nr_pages=8)
        assert other.domains() == [5]
        seen = other.domain(5)
        assert seen.ram_gfns() == d5.ram_gfns()
        d5.write(GUEST_RAM0_BASE + 10, b"from the creator")
        assert seen.read(GUEST_RAM0_BASE + 10, 16) == b"from the creator"
        # A destroyed domain: the stale handle and the registry both say so.
        machine.destroy_domain(5)
        assert other.domains() == []
        with pytest.raises(NoSuchDomain, match="d5"):
            seen.translate(GUEST_RAM0_BASE, write=False)
        with pytest.raises(NoSuchDomain, match="d5"):
            other.domain(5)
        with pytest.raises(NoSuchDomain, match="d5"):
            seen.populate(0x40000)
        # A new incarnation under the same id is a new handle.
        again = machine.create_domain(5, nr_pages=2)
        fresh = other.domain(5)
        assert fresh is not seen
        assert fresh.generation == again.generation != seen.generation
        assert fresh.nr_pages == 2


# -- byte layouts: what docs/machine-model.md promises a foreign reader --------------------------


def test_file_layouts_match_the_documentation(machine):
    d0 = machine.create_domain(0, nr_pages=4, hwdom=True, direct_mapped=True)
    d1 = machine.create_domain(1, nr_pages=600)  # two level-3 tables
    mfn = d1.lookup(GUEST_RAM0_BASE >> 12).mfn
    machine.get_page(mfn, 1)
    machine.get_page(mfn, 1)

    ft = (machine.path / "frametable").read_bytes()
    assert struct.unpack_from("<8sIIQQQQQQ", ft, 0) == (
        b"SDTFRAME", 1, 12, 0x40000000, NR_FRAMES, 0x42000000, 0x200000, 7, machine.free_frames)
    (word,) = struct.unpack_from("<Q", ft, 4096 + 8 * (mfn - machine.first_mfn))
    assert word & 0xFFFF == 1 and (word >> 16) & 3 == 1 and word >> 32 == 2
    (word,) = struct.unpack_from("<Q", ft, 4096 + 8 * (0x42000 - machine.first_mfn))
    assert word & 0xFFFF == DOMID_XEN and (word >> 16) & 3 == 1 and word >> 32 == 0

    reg = (machine.path / "domains").read_bytes()
    assert struct.unpack_from("<8sIIQQ", reg, 0) == (b"SDTDOMRG", 1, 0x7FF0, 0, 2)
    machine.alloc_domheap_pages(1, 2)
    reg = (machine.path / "domains").read_bytes()
    control, tot, zombie, extra = struct.unpack_from("<4Q", reg, 64 + 32 * 1)
    assert (control & 0xFF, (control >> 8) & 0xFF, control >> 16) == (1, 0, d1.generation)
    assert (tot, zombie, extra) == (600, 0, 2)
    control, *_ = struct.unpack_from("<4Q", reg, 64 + 32 * 0)
    assert (control >> 8) & 0xFF == 3  # hwdom | direct-mapped

    p2m = (machine.path / "p2m" / "dom1.p2m").read_bytes()
    magic, version, domid, gen, cap, nr_tables, dir_off, tables_off, flags = struct.unpack_from(
        "<8sIIQQQQQQ", p2m, 0)
    assert (magic, version, domid, gen, nr_tables, dir_off, flags) == (
        b"SDTP2M\0\0", 1, 1, d1.generation, 2, 64, 0)
    assert tables_off % 4096 == 0 and len(p2m) == tables_off + cap * 4096
    blocks = struct.unpack_from("<2Q", p2m, dir_off)
    assert blocks == ((0x40000 >> 9) + 1, (0x40000 >> 9) + 2)
    for gfn in (0x40000, 0x40001, 0x401FF, 0x40200, 0x40257):
        table = (gfn >> 9) - (0x40000 >> 9)
        (entry,) = struct.unpack_from("<Q", p2m, tables_off + 4096 * table + 8 * (gfn & 511))
        assert entry == (d1.lookup(gfn).mfn << 12) | 1
    (entry,) = struct.unpack_from("<Q", p2m, tables_off + 4096 + 8 * (0x40258 & 511))
    assert entry == 0  # beyond the 600 pages: p2m_invalid
    assert d0.lookup(d0.ram_gfns()[0]).mfn == d0.ram_gfns()[0]
    machine.put_pages([mfn, mfn])


def test_hwdom_property(machine):
    assert machine.hwdom is None
    machine.create_domain(2, nr_pages=1)
    machine.create_domain(0, nr_pages=1, hwdom=True, direct_mapped=True)
    with Machine.attach(machine.path) as other:
        assert other.hwdom == 0
    machine.destroy_domain(0)
    assert machine.hwdom is None


def test_errors_pickle_with_their_values():
    import pickle

    samples = {
        "BadMachineConfig": ("nr_frames", 0, "why"), "MachineExists": ("/x",),
        "MachineFormatError": ("/x", "why"), "BadDomid": (0x7FF2,),
        "BadDomainConfig": (1, "nr_pages", 0, "why"), "DomainExists": (1, "dying", 2),
        "HwdomExists": (1, 0), "NoSuchDomain": (9, "free"), "BadIpa": (1, -1, "why"),
        "BadGfn": (1, -1), "NotMapped": (3, 0x40001000, True),
        "WrongP2mType": (1, 0x9000010, "p2m_mmio_direct_dev", "read"),
        "GfnOccupied": (1, 0x40000, "p2m_ram_rw"),
        "BadP2mTransition": (1, 0x40000, "p2m_ram_rw", "p2m_invalid"),
        "P2mFull": (1, 0x40000, 33), "MmioOverlapsRam": (1, 0x9000, 0x40000),
        "FrameOutOfRange": (-1, 0x40000, 0x43FFF),
        "MachineAddressOutOfRange": (0x3FFFFFFF, 1, 0x40000000, 0x44000000),
        "NotOwner": (0x40123, 1, 2, "allocated"), "PageNotPinned": (0x40123,),
        "RefcountOverflow": (0x40123,), "OutOfFrames": (1, 10, 3),
        "FrameNotFree": (0, 0x42000, DOMID_XEN, "allocated"),
        "StaticShmDenied": (1, False, False), "FramePinned": (0x40123, 2),
        "NotDomheapPage": (0x40123, 1),
    }
    classes = [n for n in xen.errors.__all__ if n != "MachineError"]
    assert sorted(samples) == sorted(classes)
    for name, args in samples.items():
        exc = getattr(xen, name)(*args)
        assert isinstance(exc, xen.MachineError)
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc), name
    assert xen.NotOwner(0x40123, 1, 2, "allocated").mfn == 0x40123


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_domain_lifetimes_do_not_keep_descriptors(tmp_path):
    """A host creating and destroying domains for ever must not run out of
    descriptors: a destroyed incarnation nobody holds gives its p2m mapping
    back; one still held stays readable as dead until dropped."""
    import gc

    with Machine.create(tmp_path / "m", nr_frames=NR_FRAMES, seed=7) as m, \
            Machine.attach(tmp_path / "m") as peer:
        m.create_domain(1, nr_pages=4)
        peer.domain(1)  # the peer maps the p2m too
        held = peer.domain(1)
        m.destroy_domain(1)
        gc.collect()
        before = _open_fds()
        for _ in range(50):
            m.create_domain(1, nr_pages=4)
            assert peer.domain(1).generation > held.generation
            m.destroy_domain(1)
        m.create_domain(1, nr_pages=4)
        peer.domain(1)
        gc.collect()
        # One live incarnation's p2m per machine handle, whatever came before.
        assert _open_fds() <= before + 2
        # the held handle still reads, as the dead p2m it is
        assert held.lookup(GUEST_RAM0_BASE // PAGE_SIZE).type is P2mType.p2m_invalid
        del held
        gc.collect()
        assert _open_fds() <= before + 1
