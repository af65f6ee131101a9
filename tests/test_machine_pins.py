"""Machine model: get_page/put_page, zombie frames, teardown with pins, and
the same across processes and threads."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from stubdom.xen import (
    DOMID_INVALID,
    DOMID_XEN,
    GUEST_RAM0_BASE,
    PAGE_SHIFT,
    PAGE_SIZE,
    DomainExists,
    FrameState,
    Machine,
    NoSuchDomain,
    NotMapped,
    NotOwner,
    OutOfFrames,
    P2mType,
    PageNotPinned,
)

NR_FRAMES = 16384
RAM0_GFN = GUEST_RAM0_BASE >> PAGE_SHIFT


@pytest.fixture
def machine(tmp_path):
    with Machine.create(tmp_path / "m", nr_frames=NR_FRAMES, seed=3) as m:
        yield m


# A second process: attaches to the machine and obeys one command per line.
CHILD = r"""
import sys
from stubdom.xen import Machine, P2mType

machine = Machine.attach(sys.argv[1])
print("attached", flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    nums = [int(a, 0) for a in args]
    try:
        if cmd == "pin_gfn":          # domid gfn: pin the frame behind a guest page
            dom = machine.domain(nums[0])
            entry = dom.lookup(nums[1])
            machine.get_page(entry.mfn, nums[0])
            out = hex(entry.mfn)
        elif cmd == "pin":            # mfn domid
            machine.get_page(nums[0], nums[1])
            out = "ok"
        elif cmd == "unpin":          # mfn
            machine.put_page(nums[0])
            out = "ok"
        elif cmd == "lookup":         # domid gfn
            entry = machine.domain(nums[0]).lookup(nums[1])
            out = f"{entry.type.name} {entry.mfn:#x}"
        elif cmd == "read":           # domid ipa length
            out = machine.domain(nums[0]).read(nums[1], nums[2]).hex()
        elif cmd == "frame":          # mfn
            out = (f"{machine.frame_owner(nums[0]):#x} {machine.frame_state(nums[0]).name} "
                   f"{machine.frame_refcount(nums[0])}")
        elif cmd == "domains":
            out = ",".join(map(str, machine.domains()))
        elif cmd == "churn":          # mfn domid n: pin and unpin n times
            for _ in range(nums[2]):
                machine.get_page(nums[0], nums[1])
                machine.put_page(nums[0])
            out = "ok"
        else:
            out = f"unknown {cmd}"
    except Exception as exc:
        out = f"error {type(exc).__name__}: {exc}"
    print(out, flush=True)
machine.close()
"""


class Child:
    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-c", CHILD, str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.ask(None) == "attached"

    def ask(self, line: str | None) -> str:
        if line is not None:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, f"child died (rc {self.proc.poll()})"
        return reply.strip()

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            assert self.proc.wait(timeout=30) == 0
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()


@pytest.fixture
def child(machine):
    c = Child(machine.path)
    yield c
    c.close()


# -- get_page / put_page in one process -------------------------------------------------------------


def test_get_put_counts(machine):
    dom = machine.create_domain(1, nr_pages=4)
    mfn = dom.lookup(RAM0_GFN).mfn
    machine.get_page(mfn, 1)
    machine.get_page(mfn, 1)
    assert machine.frame_refcount(mfn) == 2
    assert machine.pinned_frames() == {mfn: 2}
    assert machine.pinned_frames(1) == {mfn: 2}
    assert machine.pinned_frames(2) == {}
    machine.put_page(mfn)
    machine.put_page(mfn)
    assert machine.frame_refcount(mfn) == 0
    assert machine.frame_state(mfn) is FrameState.ALLOCATED  # still the guest's
    with pytest.raises(PageNotPinned, match=f"put_page\\(mfn {mfn:#x}\\)"):
        machine.put_page(mfn)
    assert machine.pinned_frames() == {}


def test_get_page_on_a_frame_not_owned(machine):
    d1 = machine.create_domain(1, nr_pages=4)
    d2 = machine.create_domain(2, nr_pages=4)
    foreign = d2.lookup(RAM0_GFN).mfn
    with pytest.raises(NotOwner, match=f"mfn {foreign:#x} is not allocated to d1: owner 0x2, state allocated"):
        machine.get_page(foreign, 1)
    free = next(m for m in range(machine.first_mfn, machine.last_mfn)
                if machine.frame_state(m) is FrameState.FREE)
    with pytest.raises(NotOwner, match=f"mfn {free:#x} .* owner 0x7ff4, state free"):
        machine.get_page(free, 1)
    with pytest.raises(NotOwner, match="mfn 0x42000 is not allocated to d0: owner 0x7ff2"):
        machine.get_page(0x42000, 0)
    machine.get_page(0x42000, DOMID_XEN)  # Xen's own frames pin for Xen
    machine.put_page(0x42000)
    assert machine.frame_refcount(foreign) == 0
    assert d1.nr_pages == 4


def test_batch_pins_are_all_or_nothing(machine):
    dom = machine.create_domain(1, nr_pages=8)
    other = machine.create_domain(2, nr_pages=1)
    mfns = [dom.lookup(g).mfn for g in dom.ram_gfns()]
    bad = other.lookup(RAM0_GFN).mfn
    with pytest.raises(NotOwner, match=f"mfn {bad:#x}"):
        machine.get_pages([*mfns[:4], bad, *mfns[4:]], 1)
    assert machine.pinned_frames() == {}
    machine.get_pages([*mfns, mfns[0]], 1)  # a repeat pins twice
    assert machine.pinned_frames() == {**{m: 1 for m in mfns}, mfns[0]: 2}
    with pytest.raises(PageNotPinned, match=f"mfn {mfns[1]:#x}"):
        machine.put_pages([mfns[0], mfns[1], mfns[1]])
    assert machine.frame_refcount(mfns[0]) == 2
    machine.put_pages([*mfns, mfns[0]])
    assert machine.pinned_frames() == {}


# -- zombie frames ---------------------------------------------------------------------------------------


def test_balloon_out_a_pinned_page_makes_a_zombie(machine):
    dom = machine.create_domain(1, nr_pages=16)
    gfn = RAM0_GFN + 5
    mfn = dom.lookup(gfn).mfn
    machine.get_page(mfn, 1)
    free = machine.free_frames
    assert dom.balloon_out(gfn) == mfn
    assert dom.lookup(gfn).type is P2mType.p2m_invalid
    assert machine.frame_owner(mfn) == 1  # kept for the pin holder's checks
    assert machine.frame_state(mfn) is FrameState.ZOMBIE
    assert machine.free_frames == free
    assert dom.nr_pages == 15
    with pytest.raises(NotOwner, match="state zombie"):
        machine.get_page(mfn, 1)  # no new pins on a given-back frame
    machine.put_page(mfn)
    assert machine.frame_state(mfn) is FrameState.FREE
    assert machine.frame_owner(mfn) == DOMID_INVALID
    assert machine.free_frames == free + 1


def test_destroy_domain_with_pins_left(machine):
    dom = machine.create_domain(4, nr_pages=32)
    mfns = [dom.lookup(g).mfn for g in dom.ram_gfns()]
    pinned = mfns[3:6]
    machine.get_pages(pinned, 4)
    machine.get_page(pinned[0], 4)
    free = machine.free_frames
    machine.destroy_domain(4)
    assert machine.domains() == []
    assert machine.dying_domains() == {4: 3}
    assert machine.free_frames == free + 29
    for mfn in mfns:
        if mfn in pinned:
            assert machine.frame_state(mfn) is FrameState.ZOMBIE
            assert machine.frame_owner(mfn) == 4
        else:
            assert machine.frame_state(mfn) is FrameState.FREE
    assert not (machine.path / "p2m" / "dom4.p2m").exists()
    with pytest.raises(NoSuchDomain, match=r"d4 \(destroyed\)"):
        # The stale handle sees an empty p2m and says the domain is gone.
        dom.translate(GUEST_RAM0_BASE, write=False)
    with pytest.raises(DomainExists, match=r"d4 already exists: dying \(3 frames still pinned\)"):
        machine.create_domain(4, nr_pages=1)
    machine.put_pages(pinned)
    assert machine.dying_domains() == {4: 1}  # pinned[0] had two pins
    assert machine.frame_state(pinned[1]) is FrameState.FREE
    assert machine.frame_state(pinned[0]) is FrameState.ZOMBIE
    machine.put_page(pinned[0])
    assert machine.dying_domains() == {}
    assert machine.pinned_frames() == {}
    assert machine.free_frames == free + 32
    assert machine.create_domain(4, nr_pages=1).nr_pages == 1


# -- across processes ---------------------------------------------------------------------------------------


def test_pin_in_another_process_survives_balloon_out(machine, child):
    dom = machine.create_domain(1, nr_pages=32)
    gfn = RAM0_GFN + 9
    dom.write(gfn << PAGE_SHIFT, b"in flight")
    reply = child.ask(f"pin_gfn 1 {gfn:#x}")
    mfn = int(reply, 16)
    assert mfn == dom.lookup(gfn).mfn
    assert machine.frame_refcount(mfn) == 1
    assert machine.pinned_frames() == {mfn: 1}

    dom.balloon_out(gfn)
    # Gone from the p2m at once, in both processes ...
    assert dom.lookup(gfn).type is P2mType.p2m_invalid
    with pytest.raises(NotMapped, match=f"gfn {gfn:#x}"):
        dom.read(gfn << PAGE_SHIFT, 1)
    assert child.ask(f"lookup 1 {gfn:#x}") == "p2m_invalid 0xffffffffffffffff"
    assert child.ask(f"read 1 {gfn << PAGE_SHIFT:#x} 1").startswith("error NotMapped")
    # ... but the frame is still allocated to d1, pinned, content intact.
    assert machine.frame_state(mfn) is FrameState.ZOMBIE
    assert machine.frame_owner(mfn) == 1
    assert child.ask(f"frame {mfn:#x}") == "0x1 ZOMBIE 1"
    assert machine.read_machine(mfn << PAGE_SHIFT, 9) == b"in flight"

    # Exhaust every free frame: the zombie is never handed out.
    hog = machine.create_domain(2, nr_pages=machine.free_frames)
    hog_mfns = {hog.lookup(g).mfn for g in hog.ram_gfns()}
    assert mfn not in hog_mfns
    assert machine.free_frames == 0
    with pytest.raises(OutOfFrames, match="1 requested, 0 free"):
        dom.populate(gfn)
    with pytest.raises(OutOfFrames, match="1 requested, 0 free"):
        machine.create_domain(3, nr_pages=1)
    assert machine.frame_state(mfn) is FrameState.ZOMBIE

    # The other process drops its pin: now, and only now, the frame is free.
    assert child.ask(f"unpin {mfn:#x}") == "ok"
    assert machine.frame_state(mfn) is FrameState.FREE
    assert machine.frame_owner(mfn) == DOMID_INVALID
    assert machine.free_frames == 1
    assert dom.populate(gfn) == mfn  # the only free frame, scrubbed
    assert dom.read(gfn << PAGE_SHIFT, PAGE_SIZE) == bytes(PAGE_SIZE)
    assert child.ask(f"unpin {mfn:#x}") == (f"error PageNotPinned: put_page(mfn {mfn:#x}): frame is not pinned"
                                            " (count would underflow)")


def test_destroy_with_a_pin_held_by_another_process(machine, child):
    dom = machine.create_domain(6, nr_pages=8)
    mfn = int(child.ask(f"pin_gfn 6 {RAM0_GFN:#x}"), 16)
    machine.destroy_domain(6)
    assert child.ask("domains") == ""
    assert child.ask(f"lookup 6 {RAM0_GFN:#x}").startswith("error NoSuchDomain: no such domain: d6 (dying)")
    assert machine.dying_domains() == {6: 1}
    assert child.ask(f"frame {mfn:#x}") == "0x6 ZOMBIE 1"
    assert child.ask(f"unpin {mfn:#x}") == "ok"
    assert machine.dying_domains() == {}
    assert machine.frame_state(mfn) is FrameState.FREE
    assert dom.generation  # the handle is stale but harmless


def test_child_sees_domains_created_after_it_attached(machine, child):
    assert child.ask("domains") == ""
    dom = machine.create_domain(7, nr_pages=3)
    dom.write(GUEST_RAM0_BASE + PAGE_SIZE - 2, b"hi!!")
    assert child.ask("domains") == "7"
    assert child.ask(f"read 7 {GUEST_RAM0_BASE + PAGE_SIZE - 2:#x} 4") == b"hi!!".hex()
    far = 0x70000
    dom.populate(far)  # a table appended after the child mapped the p2m
    assert child.ask(f"lookup 7 {far:#x}") == f"p2m_ram_rw {dom.lookup(far).mfn:#x}"


def test_pin_churn_from_two_processes_and_threads(machine, child):
    dom = machine.create_domain(1, nr_pages=2)
    mfn = dom.lookup(RAM0_GFN).mfn
    child.proc.stdin.write(f"churn {mfn:#x} 1 3000\n")
    child.proc.stdin.flush()
    errors = []

    def churn(m: Machine) -> None:
        try:
            for _ in range(500):
                m.get_page(mfn, 1)
                m.put_page(mfn)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with Machine.attach(machine.path) as second:
        threads = [threading.Thread(target=churn, args=(m,)) for m in (machine, machine, second, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert child.ask(None) == "ok"
    assert errors == []
    assert machine.frame_refcount(mfn) == 0
    assert machine.frame_state(mfn) is FrameState.ALLOCATED


# -- extra (domheap) pages at teardown -------------------------------------------------------------------


def test_domheap_pages_are_not_guest_ram_and_are_relinquished(machine):
    from stubdom.xen import NotDomheapPage

    dom = machine.create_domain(1, nr_pages=8)
    ram_mfn = dom.lookup(RAM0_GFN).mfn
    with pytest.raises(NotDomheapPage, match=f"mfn {ram_mfn:#x} of d1 is guest RAM"):
        machine.free_domheap_pages(1, [ram_mfn])
    assert dom.lookup(RAM0_GFN).mfn == ram_mfn  # still mapped, still the guest's
    heap = machine.alloc_domheap_pages(1, 4)
    assert dom.extra_pages == 4 and dom.nr_pages == 8
    machine.free_domheap_pages(1, heap[:1])
    assert dom.extra_pages == 3
    machine.get_page(heap[1], 1)  # a shadow page still in use when the domain dies
    free = machine.free_frames
    machine.destroy_domain(1)
    assert machine.free_frames == free + 8 + 2
    assert machine.frame_state(heap[1]) is FrameState.ZOMBIE
    assert all(machine.frame_state(m) is FrameState.FREE for m in heap[2:])
    assert machine.dying_domains() == {1: 1}
    machine.put_page(heap[1])
    assert machine.dying_domains() == {}
    assert machine.frame_owner(heap[1]) == DOMID_INVALID
