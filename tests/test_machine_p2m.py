"""Machine model: p2m translation, scattering, the 1:1 hardware domain,
guest memory by IPA, p2m types, reservation changes, static shm."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stubdom.xen import (
    DOMID_INVALID,
    DOMID_XEN,
    GUEST_RAM0_BASE,
    INVALID_MFN,
    PAGE_SHIFT,
    PAGE_SIZE,
    BadGfn,
    BadIpa,
    BadP2mTransition,
    FrameNotFree,
    FrameState,
    GfnOccupied,
    Machine,
    MmioOverlapsRam,
    NotMapped,
    NotOwner,
    OutOfFrames,
    P2mEntry,
    P2mFull,
    P2mType,
    StaticShmDenied,
    WrongP2mType,
)

NR_FRAMES = 16384
RAM0_GFN = GUEST_RAM0_BASE >> PAGE_SHIFT
PL011_MFN = 0x09000  # QEMU virt's UART: device MMIO, outside RAM


@pytest.fixture
def machine(tmp_path):
    with Machine.create(tmp_path / "m", nr_frames=NR_FRAMES, seed=1) as m:
        yield m


@pytest.fixture
def domu(machine):
    return machine.create_domain(1, nr_pages=64)


def mfns_of(dom):
    return [dom.lookup(g).mfn for g in dom.ram_gfns()]


# -- translation ------------------------------------------------------------------------------


def test_domu_p2m_translation(machine, domu):
    gfns = domu.ram_gfns()
    assert gfns == list(range(RAM0_GFN, RAM0_GFN + 64))
    assert domu.nr_pages == 64
    for gfn in gfns:
        entry = domu.lookup(gfn)
        assert entry == P2mEntry(gfn, entry.mfn, P2mType.p2m_ram_rw)
        assert machine.first_mfn <= entry.mfn <= machine.last_mfn
        assert machine.frame_owner(entry.mfn) == 1
        assert machine.frame_state(entry.mfn) is FrameState.ALLOCATED
        for offset in (0, 1, 0x7FF, 0xFFF):
            ipa = (gfn << PAGE_SHIFT) | offset
            assert domu.translate(ipa, write=False) == (entry.mfn << PAGE_SHIFT) | offset
            assert domu.translate(ipa, write=True) == (entry.mfn << PAGE_SHIFT) | offset
    unmapped = domu.lookup(RAM0_GFN + 64)
    assert unmapped == P2mEntry(RAM0_GFN + 64, INVALID_MFN, P2mType.p2m_invalid)
    assert not unmapped.is_ram
    assert domu.lookup(0).type is P2mType.p2m_invalid  # no table there at all


def test_guest_data_lands_in_the_translated_frame(machine, domu):
    ipa = GUEST_RAM0_BASE + 5 * PAGE_SIZE + 100
    domu.write(ipa, b"guest bytes")
    maddr = domu.translate(ipa, write=False)
    assert machine.read_machine(maddr, 11) == b"guest bytes"
    machine.write_machine(maddr, b"TEE!")
    assert domu.read(ipa, 11) == b"TEE!t bytes"


# -- scattering --------------------------------------------------------------------------------------


def test_domu_frames_are_scattered(machine):
    dom = machine.create_domain(1, nr_pages=256)
    mfns = mfns_of(dom)
    assert len(set(mfns)) == 256
    adjacent = sum(1 for a, b in zip(mfns, mfns[1:]) if b == a + 1)
    assert adjacent < 16  # a contiguous block would have 255
    assert mfns != sorted(mfns)
    assert max(mfns) - min(mfns) > 16 * 256  # spread over RAM, not one cluster
    shm = machine.static_shm
    assert not any(mfn in shm.mfns() for mfn in mfns)


def _layout(tmp_path, name, seed):
    with Machine.create(tmp_path / name, nr_frames=NR_FRAMES, seed=seed) as m:
        m.create_domain(0, nr_pages=100, hwdom=True, direct_mapped=True)
        a = mfns_of(m.create_domain(1, nr_pages=128))
        b = mfns_of(m.create_domain(2, nr_pages=128))
        return a, b


def test_scattering_is_reproducible_by_seed(tmp_path):
    first = _layout(tmp_path, "a", seed=42)
    assert _layout(tmp_path, "b", seed=42) == first
    other = _layout(tmp_path, "c", seed=43)
    assert other[0] != first[0] and other[1] != first[1]
    assert not set(first[0]) & set(first[1])


def test_scattering_still_works_when_ram_is_nearly_full(machine):
    big = machine.create_domain(1, nr_pages=machine.free_frames - 10)
    small = machine.create_domain(2, nr_pages=10)
    assert machine.free_frames == 0
    assert not set(mfns_of(big)) & set(mfns_of(small))


# -- the 1:1 hardware domain ---------------------------------------------------------------------------


def test_hwdom_is_direct_mapped_around_the_static_region(machine):
    # 8192 frames below the static region at mfn 0x42000 and 300 above it.
    hw = machine.create_domain(0, nr_pages=8192 + 300, hwdom=True, direct_mapped=True)
    assert hw.is_hwdom and hw.direct_mapped
    gfns = hw.ram_gfns()
    assert len(gfns) == hw.nr_pages == 8192 + 300
    shm = machine.static_shm.mfns()
    assert not any(g in shm for g in gfns)
    assert gfns == list(range(0x40000, 0x42000)) + list(range(0x42200, 0x42200 + 300))
    for gfn in gfns:
        assert hw.lookup(gfn) == P2mEntry(gfn, gfn, P2mType.p2m_ram_rw)
        assert machine.frame_owner(gfn) == 0
    assert hw.translate(0x42200ABC, write=True) == 0x42200ABC
    for mfn in shm:
        assert machine.frame_owner(mfn) == DOMID_XEN
        assert hw.lookup(mfn).type is P2mType.p2m_invalid


def test_direct_mapped_populate_takes_the_same_frame(machine):
    hw = machine.create_domain(0, nr_pages=16, hwdom=True, direct_mapped=True)
    assert hw.balloon_out(0x40003) == 0x40003
    assert machine.frame_state(0x40003) is FrameState.FREE
    assert hw.populate(0x40003) == 0x40003
    assert hw.populate(0x40100) == 0x40100
    with pytest.raises(FrameNotFree, match="mfn 0x42000 is not free"):
        hw.populate(0x42000)
    domu = machine.create_domain(1, nr_pages=4)
    taken = domu.lookup(RAM0_GFN).mfn
    with pytest.raises(FrameNotFree, match=f"mfn {taken:#x}"):
        hw.populate(taken)


# -- guest memory by IPA ------------------------------------------------------------------------------


def test_read_write_across_page_boundaries(machine, domu):
    start = GUEST_RAM0_BASE + 3 * PAGE_SIZE - 5
    data = bytes(range(256)) * 20  # 5120 bytes: pages 2, 3 and 4 of the guest
    domu.write(start, data)
    assert domu.read(start, len(data)) == data
    # Each piece is in its own (scattered) frame, at the translated address.
    pieces = [(start, 5), (start + 5, PAGE_SIZE), (start + 5 + PAGE_SIZE, len(data) - 5 - PAGE_SIZE)]
    pos = 0
    frames = set()
    for ipa, n in pieces:
        maddr = domu.translate(ipa, write=False)
        frames.add(maddr >> PAGE_SHIFT)
        assert machine.read_machine(maddr, n) == data[pos : pos + n]
        pos += n
    assert len(frames) == 3
    assert domu.read(start, 0) == b""
    domu.write(start, memoryview(b"xyz"))
    assert domu.read(start, 3) == b"xyz"


@settings(max_examples=60, deadline=None)
@given(offset=st.integers(0, 8 * PAGE_SIZE), length=st.integers(0, 3 * PAGE_SIZE),
       seed=st.integers(0, 255))
def test_read_write_round_trip_matches_page_by_page(tmp_path_factory, offset, length, seed):
    path = tmp_path_factory.mktemp("rw") / "m"
    with Machine.create(path, nr_frames=1024, static_shm_base=0x40200000,
                        static_shm_size=0x10000) as m:
        dom = m.create_domain(1, nr_pages=12)
        data = bytes((seed + i) & 0xFF for i in range(length))
        ipa = GUEST_RAM0_BASE + offset
        dom.write(ipa, data)
        assert dom.read(ipa, length) == data
        got = b"".join(
            m.read_machine(dom.translate(a, write=False), 1) for a in range(ipa, ipa + length, 97)
        )
        assert got == data[::97]


def test_a_refused_page_means_nothing_is_written(machine, domu):
    domu.set_type(RAM0_GFN + 1, P2mType.p2m_ram_ro)
    with pytest.raises(WrongP2mType, match=f"{GUEST_RAM0_BASE + PAGE_SIZE:#x}"):
        domu.write(GUEST_RAM0_BASE + PAGE_SIZE - 4, b"12345678")
    assert domu.read(GUEST_RAM0_BASE + PAGE_SIZE - 4, 8) == bytes(8)
    with pytest.raises(NotMapped, match=f"{GUEST_RAM0_BASE + 64 * PAGE_SIZE:#x}"):
        domu.read(GUEST_RAM0_BASE + 64 * PAGE_SIZE - 1, 2)


# -- bad IPAs, wrong types ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ipa", [-1, 1 << 48, (1 << 48) + 0x1000, 2**64])
def test_bad_ipa(domu, ipa):
    text = f"{ipa:#x}"
    with pytest.raises(BadIpa, match=text):
        domu.translate(ipa, write=False)
    with pytest.raises(BadIpa, match=text):
        domu.read(ipa, 1)
    with pytest.raises(BadIpa, match=text):
        domu.write(ipa, b"x")


def test_bad_ipa_other_shapes(domu):
    with pytest.raises(BadIpa, match="'0x40000000'"):
        domu.translate("0x40000000", write=False)
    with pytest.raises(BadIpa, match="leaves the 48-bit IPA space"):
        domu.read((1 << 48) - 2, 3)
    with pytest.raises(BadIpa, match="bad length -1"):
        domu.read(GUEST_RAM0_BASE, -1)
    with pytest.raises(BadGfn, match="0x1000000000"):
        domu.lookup(1 << 36)
    with pytest.raises(BadGfn, match="-0x1"):
        domu.balloon_out(-1)


def test_not_mapped(domu):
    for ipa in (0, 0x3FFFFFFF, GUEST_RAM0_BASE + 64 * PAGE_SIZE, 0xFFFF_FFFF_F000):
        with pytest.raises(NotMapped, match=f"IPA {ipa:#x}"):
            domu.translate(ipa, write=False)
        with pytest.raises(NotMapped, match="p2m_invalid"):
            domu.read(ipa, 1)


def test_write_to_ram_ro(domu):
    gfn = RAM0_GFN + 7
    domu.write(gfn << PAGE_SHIFT, b"before")
    domu.set_type(gfn, P2mType.p2m_ram_ro)
    assert domu.lookup(gfn).type is P2mType.p2m_ram_ro
    ipa = (gfn << PAGE_SHIFT) + 9
    assert domu.translate(ipa, write=False) & 0xFFF == 9
    assert domu.read(gfn << PAGE_SHIFT, 6) == b"before"
    with pytest.raises(WrongP2mType, match=f"write at IPA {ipa:#x}.*p2m_ram_ro"):
        domu.translate(ipa, write=True)
    with pytest.raises(WrongP2mType, match="p2m_ram_ro"):
        domu.write(gfn << PAGE_SHIFT, b"after!")
    assert domu.read(gfn << PAGE_SHIFT, 6) == b"before"
    domu.set_type(gfn, P2mType.p2m_ram_rw)
    domu.write(gfn << PAGE_SHIFT, b"after!")


def test_access_through_mmio(machine, domu):
    gfn = 0x09000  # where the guest's UART would be
    domu.map_mmio(gfn, PL011_MFN)
    assert domu.lookup(gfn) == P2mEntry(gfn, PL011_MFN, P2mType.p2m_mmio_direct_dev)
    for write in (False, True):
        with pytest.raises(WrongP2mType, match="IPA 0x9000010.*p2m_mmio_direct_dev"):
            domu.translate(0x09000010, write=write)
    with pytest.raises(WrongP2mType, match="read at IPA 0x9000000"):
        domu.read(0x09000000, 4)
    with pytest.raises(WrongP2mType, match="balloon out"):
        domu.balloon_out(gfn)
    with pytest.raises(GfnOccupied, match="gfn 0x9000 is already mapped"):
        domu.map_mmio(gfn, PL011_MFN)
    with pytest.raises(MmioOverlapsRam, match="mfn 0x40010 is machine RAM"):
        domu.map_mmio(0x09001, 0x40010)
    with pytest.raises(BadP2mTransition, match="p2m_mmio_direct_dev -> p2m_ram_rw"):
        domu.set_type(gfn, P2mType.p2m_ram_rw)
    domu.unmap_mmio(gfn)
    assert domu.lookup(gfn).type is P2mType.p2m_invalid
    with pytest.raises(NotMapped, match="gfn 0x9000"):
        domu.unmap_mmio(gfn)


def test_set_type_transitions(domu):
    with pytest.raises(BadP2mTransition, match="p2m_ram_rw -> p2m_invalid"):
        domu.set_type(RAM0_GFN, P2mType.p2m_invalid)
    with pytest.raises(BadP2mTransition, match="p2m_ram_rw -> p2m_mmio_direct_dev"):
        domu.set_type(RAM0_GFN, P2mType.p2m_mmio_direct_dev)
    with pytest.raises(BadP2mTransition, match="-> 9"):
        domu.set_type(RAM0_GFN, 9)
    with pytest.raises(NotMapped, match="gfn 0x40040"):
        domu.set_type(RAM0_GFN + 64, P2mType.p2m_ram_ro)


# -- reservation changes --------------------------------------------------------------------------------


def test_balloon_out_and_populate(machine, domu):
    gfn = RAM0_GFN + 10
    domu.write(gfn << PAGE_SHIFT, b"secret")
    free = machine.free_frames
    mfn = domu.balloon_out(gfn)
    assert domu.lookup(gfn).type is P2mType.p2m_invalid
    assert machine.frame_state(mfn) is FrameState.FREE
    assert machine.frame_owner(mfn) == DOMID_INVALID
    assert machine.free_frames == free + 1
    assert domu.nr_pages == 63
    assert gfn not in domu.ram_gfns()
    with pytest.raises(NotMapped, match="gfn 0x4000a"):
        domu.balloon_out(gfn)
    new = domu.populate(gfn)
    assert domu.lookup(gfn) == P2mEntry(gfn, new, P2mType.p2m_ram_rw)
    assert domu.read(gfn << PAGE_SHIFT, PAGE_SIZE) == bytes(PAGE_SIZE)
    assert domu.nr_pages == 64
    with pytest.raises(GfnOccupied, match="gfn 0x4000a"):
        domu.populate(gfn)


def test_freed_frames_are_scrubbed_before_reuse(machine):
    a = machine.create_domain(1, nr_pages=machine.free_frames)
    for gfn in a.ram_gfns()[:3]:
        a.write(gfn << PAGE_SHIFT, b"\xAA" * PAGE_SIZE)
    mfn = a.balloon_out(RAM0_GFN)
    assert machine.read_machine(mfn << PAGE_SHIFT, 4) == b"\xAA" * 4  # not scrubbed yet
    b = machine.create_domain(2, nr_pages=1)
    assert b.lookup(RAM0_GFN).mfn == mfn  # the only free frame
    assert b.read(GUEST_RAM0_BASE, PAGE_SIZE) == bytes(PAGE_SIZE)


def test_populate_far_away_grows_the_p2m_until_full(machine, domu):
    gfn = 0x80000  # IPA 2 GiB: a block the domain had no table for
    domu.populate(gfn)
    assert domu.lookup(gfn).type is P2mType.p2m_ram_rw
    with Machine.attach(machine.path) as other:
        assert other.domain(1).lookup(gfn) == domu.lookup(gfn)
    block = 0x100000
    with pytest.raises(P2mFull, match=r"gfn 0x[0-9a-f]+: p2m holds at most \d+ tables"):
        for i in range(1000):
            domu.populate(block + i * 512)
    assert machine.frame_owner(domu.lookup(block).mfn) == 1


def test_populate_out_of_frames(machine):
    dom = machine.create_domain(1, nr_pages=machine.free_frames)
    with pytest.raises(OutOfFrames, match="d1: out of frames: 1 requested, 0 free"):
        dom.populate(0x50000)
    assert dom.lookup(0x50000).type is P2mType.p2m_invalid


def test_balloon_out_a_frame_not_owned(machine):
    hw = machine.create_domain(0, nr_pages=4, hwdom=True, direct_mapped=True)
    hw.map_static_shm()
    with pytest.raises(NotOwner, match="mfn 0x42000 is not allocated to d0: owner 0x7ff2"):
        hw.balloon_out(0x42000)


# -- static shared memory ---------------------------------------------------------------------------------


def test_static_shm_only_for_direct_mapped_hwdom(machine, domu):
    hw = machine.create_domain(0, nr_pages=16, hwdom=True, direct_mapped=True)
    assert not hw.static_shm_mapped
    hw.map_static_shm()
    assert hw.static_shm_mapped
    shm = machine.static_shm
    for mfn in shm.mfns():
        assert hw.lookup(mfn) == P2mEntry(mfn, mfn, P2mType.p2m_ram_rw)
        assert machine.frame_owner(mfn) == DOMID_XEN
    hw.write(shm.base + 0x1000, b"shared")
    assert machine.read_machine(shm.base + 0x1000, 6) == b"shared"
    assert hw.translate(shm.end - 1, write=True) == shm.end - 1
    assert len(hw.ram_gfns()) == 16  # the region is Xen's, not the hwdom's RAM
    with pytest.raises(GfnOccupied, match="gfn 0x42000"):
        hw.map_static_shm()
    hw.unmap_static_shm()
    assert not hw.static_shm_mapped
    with pytest.raises(NotMapped, match="IPA 0x42000000"):
        hw.translate(shm.base, write=False)
    with pytest.raises(NotMapped, match="gfn 0x42000"):
        hw.unmap_static_shm()

    with pytest.raises(StaticShmDenied, match=r"d1: .*hwdom=False, direct_mapped=False"):
        domu.map_static_shm()
    assert not domu.static_shm_mapped
    not_dm = machine.create_domain(2, nr_pages=4, direct_mapped=True)
    with pytest.raises(StaticShmDenied, match=r"d2: .*hwdom=False, direct_mapped=True"):
        not_dm.map_static_shm()
    machine.destroy_domain(0)
    hw_dm_less = machine.create_domain(3, nr_pages=4, hwdom=True)
    with pytest.raises(StaticShmDenied, match=r"d3: .*hwdom=True, direct_mapped=False"):
        hw_dm_less.map_static_shm()
    assert hw_dm_less.ram_gfns()[0] == RAM0_GFN  # not direct-mapped: the guest layout
