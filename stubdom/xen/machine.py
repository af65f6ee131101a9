"""The machine: RAM, frame table, domain registry and p2m files in one
directory that several processes map at once.

    <machine>/ram            nr_frames * 4096 bytes, sparse; frame first_mfn + i at 4096*i
    <machine>/frametable     frames.py: header + one u64 per frame
    <machine>/domains        registry.py: one 32-byte entry per domid
    <machine>/p2m/dom<N>.p2m p2m.py: one per live domain
    <machine>/lock           flock target (lock.py)

See docs/machine-model.md for the byte layouts and how this maps onto Xen.
"""

from __future__ import annotations

import mmap
import os
import random
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from stubdom.rundir import FILE_MODE, make_private_dir, make_private_dirs

from .constants import (
    DEFAULT_RAM_BASE,
    DOMID_FIRST_RESERVED,
    DOMID_INVALID,
    DOMID_XEN,
    GUEST_RAM0_BASE,
    GUEST_RAM0_SIZE,
    OPTEE_SHMEM_SIZE,
    OPTEE_SHMEM_START,
    PAGE_SHIFT,
    PAGE_SIZE,
)
from .domain import Domain, pread_ram
from .errors import (
    BadDomainConfig,
    BadDomid,
    BadMachineConfig,
    DomainExists,
    FramePinned,
    HwdomExists,
    MachineAddressOutOfRange,
    MachineError,
    MachineExists,
    MachineFormatError,
    NoSuchDomain,
    NotDomheapPage,
    NotOwner,
    OutOfFrames,
)
from .frames import FrameState, FrameTable
from .lock import MachineLock
from .p2m import P2M_TABLE_ORDER, P2M_TYPE_MASK, RAM_TYPES, P2mFile, P2mType, encode_entry
from .registry import FLAG_DIRECT_MAPPED, FLAG_HWDOM, DomainRegistry, DomainState, decode_control

__all__ = ["Machine", "StaticShm", "P2M_SPARE_TABLES"]

# Room in every p2m for this many more 2 MiB level-3 tables than the domain
# starts with (populate or MMIO outside its initial ranges).
P2M_SPARE_TABLES = 32

_RAM_FILE = "ram"
_FRAMES_FILE = "frametable"
_REGISTRY_FILE = "domains"
_LOCK_FILE = "lock"
_P2M_DIR = "p2m"
_ZERO_PAGE = bytes(PAGE_SIZE)
_MFN_LIMIT = 1 << (64 - PAGE_SHIFT)


@dataclass(frozen=True, slots=True)
class StaticShm:
    """The TEE's static shared-memory carve-out, by machine address."""

    base: int
    size: int

    @property
    def end(self) -> int:
        return self.base + self.size

    def contains(self, maddr: int, length: int = 1) -> bool:
        """True if ``[maddr, maddr + length)`` lies inside the region."""
        return length >= 0 and self.base <= maddr and maddr + max(length, 1) <= self.end

    def mfns(self) -> range:
        return range(self.base >> PAGE_SHIFT, self.end >> PAGE_SHIFT)


def _p2m_path(root: Path, domid: int) -> Path:
    return root / _P2M_DIR / f"dom{domid}.p2m"


def _blocks(gfns: range) -> range:
    return range(gfns.start >> P2M_TABLE_ORDER, ((gfns.stop - 1) >> P2M_TABLE_ORDER) + 1)


class Machine:
    """A simulated Arm machine as Xen sees it.  Create one with
    :meth:`create`; other processes (or other parts of this one) use
    :meth:`attach` on the same directory."""

    def __init__(self, path: Path, lock: MachineLock, frames: FrameTable,
                 registry: DomainRegistry, ram_fd: int, ram_mm: mmap.mmap) -> None:
        self.path = path
        self._lock = lock
        self._frames = frames
        self._registry = registry
        self._ram_fd = ram_fd
        self._ram_mm = ram_mm
        self._ram = memoryview(ram_mm)
        # attach(read_by_fd=True): RAM is read with pread(2) on this
        # descriptor (and still written through the mapping); -1: read
        # through the mapping
        self._read_fd = -1
        self._domains: dict[int, Domain] = {}
        # Handles of destroyed incarnations still referenced somewhere: they
        # stay mapped (reads see an empty, dead p2m) while anyone holds them,
        # and are unmapped with their descriptor when the last holder drops
        # them (weakly tracked, so a machine that lives through many domain
        # lifetimes does not keep one mapping per lifetime), or at close().
        self._retired: weakref.WeakSet[Domain] = weakref.WeakSet()
        self._static = StaticShm(frames.static_shm_base, frames.static_shm_size)

    # -- life cycle -----------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, *, nr_frames: int, ram_base: int = DEFAULT_RAM_BASE,
               static_shm_base: int = OPTEE_SHMEM_START, static_shm_size: int = OPTEE_SHMEM_SIZE,
               seed: int = 0) -> Machine:
        """Create a machine in directory ``path`` (made if absent, mode 0700;
        must be empty).  Its files are 0600 whatever the umask: only the
        platform's user (and root) may map the machine.  The static shm
        frames are reserved to DOMID_XEN."""
        path = Path(path)
        for name, value in (("nr_frames", nr_frames), ("ram_base", ram_base),
                            ("static_shm_base", static_shm_base),
                            ("static_shm_size", static_shm_size), ("seed", seed)):
            if type(value) is not int or value < 0:
                raise BadMachineConfig(name, value, "must be a non-negative int")
        if nr_frames == 0:
            raise BadMachineConfig("nr_frames", nr_frames, "a machine needs RAM")
        if ram_base % PAGE_SIZE:
            raise BadMachineConfig("ram_base", ram_base, "not page aligned")
        ram_end = ram_base + nr_frames * PAGE_SIZE
        if ram_end >> PAGE_SHIFT > _MFN_LIMIT:
            raise BadMachineConfig("nr_frames", nr_frames, "RAM ends beyond 64-bit machine addresses")
        if seed >= 1 << 64:
            raise BadMachineConfig("seed", seed, "does not fit 64 bits")
        if static_shm_base % PAGE_SIZE or static_shm_size % PAGE_SIZE:
            raise BadMachineConfig("static_shm_base/size", (static_shm_base, static_shm_size),
                                   "not page aligned")
        if static_shm_size == 0:
            raise BadMachineConfig("static_shm_size", static_shm_size, "empty region")
        if not ram_base <= static_shm_base or static_shm_base + static_shm_size > ram_end:
            raise BadMachineConfig("static_shm_base", static_shm_base,
                                   f"region of {static_shm_size:#x} bytes is not inside RAM "
                                   f"[{ram_base:#x}, {ram_end:#x})")
        make_private_dirs(path.parent)
        make_private_dir(path)
        if any(path.iterdir()):
            raise MachineExists(str(path))

        created: list[int | MachineLock | mmap.mmap | FrameTable | DomainRegistry] = []
        try:
            make_private_dir(path / _P2M_DIR)
            lock = MachineLock(path / _LOCK_FILE)
            created.append(lock)
            os.chmod(path / _LOCK_FILE, FILE_MODE)  # created 0600 less the umask: exactly FILE_MODE
            ram_fd = os.open(path / _RAM_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            created.append(ram_fd)
            os.fchmod(ram_fd, FILE_MODE)  # O_CREAT's mode less the umask: exactly FILE_MODE
            os.ftruncate(ram_fd, nr_frames * PAGE_SIZE)  # sparse
            ram_mm = mmap.mmap(ram_fd, nr_frames * PAGE_SIZE)
            created.append(ram_mm)
            frames = FrameTable.create(path / _FRAMES_FILE, ram_base=ram_base, nr_frames=nr_frames,
                                       static_shm_base=static_shm_base,
                                       static_shm_size=static_shm_size, seed=seed)
            created.append(frames)
            registry = DomainRegistry.create(path / _REGISTRY_FILE)
            created.append(registry)
            # The static region is Xen's, never on the heap (see docs: DOMID_XEN).
            frames.assign(StaticShm(static_shm_base, static_shm_size).mfns(), DOMID_XEN)
        except BaseException:
            for thing in reversed(created):
                if isinstance(thing, int):
                    os.close(thing)
                else:
                    thing.close()
            for name in (_RAM_FILE, _FRAMES_FILE, _REGISTRY_FILE, _LOCK_FILE):
                (path / name).unlink(missing_ok=True)
            if (path / _P2M_DIR).is_dir():
                (path / _P2M_DIR).rmdir()
            raise
        return cls(path, lock, frames, registry, ram_fd, ram_mm)

    @classmethod
    def attach(cls, path: Path, *, read_by_fd: bool = False) -> Machine:
        """Map an existing machine; sees everything done by any process,
        including domains created later.

        ``read_by_fd``: read RAM (:meth:`read_machine`, ``Domain.read``)
        with pread(2) on the RAM file instead of through the mapping, which
        still serves writes and :meth:`page_view`. Both go through the same
        page cache, so what is read is the same; what differs is what this
        process maps, and so its RSS: a read fault on a shared file mapping
        maps up to 16 of the neighbouring pages already in the page cache
        (the kernel's fault-around) and they stay mapped, where a write
        fault maps only the page written. A process that reads a page or
        two of each of many domains' scattered frames (the stub domain)
        would map some 10 KiB per domain it never needed. (Writes stay on
        the mapping: pwrite(2) would be subject to RLIMIT_FSIZE, a store
        into a mapping is not.)"""
        path = Path(path)
        if not (path / _LOCK_FILE).is_file():
            raise MachineFormatError(str(path), "no machine here (lock file missing)")
        frames = FrameTable.open(path / _FRAMES_FILE)
        try:
            registry = DomainRegistry.open(path / _REGISTRY_FILE)
        except BaseException:
            frames.close()
            raise
        try:
            ram_fd = os.open(path / _RAM_FILE, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            frames.close()
            registry.close()
            raise MachineFormatError(str(path / _RAM_FILE), "RAM file missing") from None
        size = os.fstat(ram_fd).st_size
        if size != frames.nr_frames * PAGE_SIZE:
            os.close(ram_fd)
            frames.close()
            registry.close()
            raise MachineFormatError(str(path / _RAM_FILE),
                                     f"size {size} is not {frames.nr_frames} frames")
        ram_mm = mmap.mmap(ram_fd, size)
        machine = cls(path, MachineLock(path / _LOCK_FILE), frames, registry, ram_fd, ram_mm)
        if read_by_fd:
            machine._read_fd = ram_fd
        return machine

    def close(self) -> None:
        """Unmap everything.  Views from :meth:`page_view` must have been
        released first."""
        if self._ram_fd < 0:
            return
        for dom in [*self._domains.values(), *list(self._retired)]:
            dom._p2m.close()
        self._domains.clear()
        self._retired.clear()
        self._ram.release()
        self._ram_mm.close()
        os.close(self._ram_fd)
        self._ram_fd = self._read_fd = -1
        self._frames.close()
        self._registry.close()
        self._lock.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Machine {self.path}: RAM [{self.ram_base:#x}, {self.ram_end:#x}), "
                f"{self.free_frames} of {self.nr_frames} frames free>")

    # -- geometry ---------------------------------------------------------------------

    @property
    def ram_path(self) -> Path:
        """The RAM file: frame ``first_mfn + i`` is its page ``i``."""
        return self.path / _RAM_FILE

    @property
    def ram_base(self) -> int:
        return self._frames.ram_base

    @property
    def nr_frames(self) -> int:
        return self._frames.nr_frames

    @property
    def ram_size(self) -> int:
        return self._frames.nr_frames * PAGE_SIZE

    @property
    def ram_end(self) -> int:
        return self._frames.ram_base + self.ram_size

    @property
    def first_mfn(self) -> int:
        return self._frames.first_mfn

    @property
    def last_mfn(self) -> int:
        return self._frames.last_mfn

    @property
    def static_shm(self) -> StaticShm:
        return self._static

    @property
    def seed(self) -> int:
        return self._frames.seed

    @property
    def free_frames(self) -> int:
        return self._frames.nr_free

    @property
    def hwdom(self) -> int | None:
        """The live hardware domain's id, if there is one."""
        domid = self._registry.hwdom
        return None if domid == DOMID_INVALID else domid

    # -- machine-address access ---------------------------------------------------------

    def _ram_offset(self, maddr: int, length: int) -> int:
        if (type(maddr) is not int or type(length) is not int or length < 0
                or maddr < self.ram_base or maddr + length > self.ram_end
                or (length == 0 and maddr >= self.ram_end)):
            raise MachineAddressOutOfRange(maddr, length, self.ram_base, self.ram_end)
        return maddr - self.ram_base

    def read_machine(self, maddr: int, length: int) -> bytes:
        """A copy of ``length`` bytes of machine RAM at ``maddr``."""
        off = self._ram_offset(maddr, length)
        if self._read_fd >= 0:
            return pread_ram(self._read_fd, length, off)
        return bytes(self._ram[off : off + length])

    def write_machine(self, maddr: int, data: bytes | bytearray | memoryview) -> None:
        src = memoryview(data).cast("B")
        off = self._ram_offset(maddr, src.nbytes)
        self._ram[off : off + src.nbytes] = src

    def page_view(self, mfn: int) -> memoryview:
        """A writable view of one frame (release it before :meth:`close`)."""
        off = self._frames.index(mfn) * PAGE_SIZE
        return self._ram[off : off + PAGE_SIZE]

    def _scrub(self, mfns: Iterable[int]) -> None:
        for mfn in mfns:
            off = (mfn - self.first_mfn) * PAGE_SIZE
            self._ram[off : off + PAGE_SIZE] = _ZERO_PAGE

    # -- frames: ownership and get_page/put_page ---------------------------------------------

    def frame_owner(self, mfn: int) -> int:
        """The owning domid (DOMID_INVALID if free, DOMID_XEN for the static
        region); a zombie keeps the owner that gave it back."""
        return self._frames.owner(mfn)

    def frame_refcount(self, mfn: int) -> int:
        """Outstanding get_page pins (the allocation itself is not counted)."""
        return self._frames.pins(mfn)

    def frame_state(self, mfn: int) -> FrameState:
        return self._frames.state(mfn)

    def get_page(self, mfn: int, domid: int) -> None:
        """Xen's get_page(page, d): take a reference on a frame allocated to
        ``domid``; raises NotOwner otherwise (free, zombie, someone else's)."""
        with self._lock:
            self._frames.get_pages((mfn,), domid)

    def get_pages(self, mfns: Iterable[int], domid: int) -> None:
        """get_page on each (repeats pin repeatedly), all or nothing, under one
        lock acquisition."""
        mfns = list(mfns)
        with self._lock:
            self._frames.get_pages(mfns, domid)

    def put_page(self, mfn: int) -> None:
        """Xen's put_page: drop a reference; the last one frees a zombie."""
        with self._lock:
            self._reap(self._frames.put_pages((mfn,)))

    def put_pages(self, mfns: Iterable[int]) -> None:
        """put_page on each, all or nothing, under one lock acquisition."""
        mfns = list(mfns)
        with self._lock:
            self._reap(self._frames.put_pages(mfns))

    def _reap(self, owners: list[int]) -> None:
        """(lock held) Account zombie frames just freed; a dying domain whose
        last zombie went is gone for good and its id reusable."""
        reg = self._registry
        for owner in owners:
            if owner >= DOMID_FIRST_RESERVED:
                continue
            reg.adjust(owner, zombie=-1)
            entry = reg.entry(owner)
            if entry.state is DomainState.DYING and entry.zombie_pages == 0:
                reg.set_state(owner, DomainState.FREE)

    def pinned_frames(self, domid: int | None = None) -> dict[int, int]:
        """{mfn: pins} of every pinned frame (of one owner if given)."""
        return self._frames.pinned(domid)

    # -- hypervisor heap pages accounted to a domain ---------------------------------------

    def alloc_domheap_pages(self, domid: int, count: int) -> list[int]:
        """Xen's alloc_domheap_pages(d, 0, MEMF_no_refcount), ``count`` times:
        zeroed frames owned by live domain ``domid`` but in no p2m and not in
        its tot_pages -- memory the hypervisor keeps on the domain's behalf
        (a mediator's shadow pages).  They are marked extra (Xen's PGC_extra)
        and counted in the domain's extra_pages.  The caller should free them
        with :meth:`free_domheap_pages`; destroy_domain relinquishes any left.
        All or nothing; raises OutOfFrames."""
        if type(count) is not int or count <= 0:
            raise BadDomainConfig(domid, "domheap page count", count, "must be a positive int")
        frames = self._frames
        with self._lock:
            dom = self._domain_locked(domid)
            if frames.nr_free < count:
                raise OutOfFrames(domid, count, frames.nr_free)
            rng = random.Random(f"stubdom.xen:{self.seed}:domheap:{domid}:{dom.generation}:"
                                f"{frames.nr_free}")
            mfns = frames.pick_scattered(count, rng)
            self._scrub(frames.assign(mfns, domid, extra=True))
            self._registry.adjust(domid, extra=count)
        return mfns

    def free_domheap_pages(self, domid: int, mfns: Iterable[int]) -> None:
        """Free frames from :meth:`alloc_domheap_pages`.  Each must still be
        allocated to ``domid``, unpinned and unmapped; all or nothing."""
        mfns = list(mfns)
        frames = self._frames
        with self._lock:
            for mfn in mfns:
                owner, state = frames.describe(mfn)
                if owner != domid or state != "allocated":
                    raise NotOwner(mfn, domid, owner, state)
                if not frames.is_extra(mfn):
                    raise NotDomheapPage(mfn, domid)
                if frames.pins(mfn):
                    raise FramePinned(mfn, frames.pins(mfn))
            if len(set(mfns)) != len(mfns):
                raise BadDomainConfig(domid, "domheap frames to free", mfns, "repeats a frame")
            for mfn in mfns:
                frames.give_back(mfn)
            self._registry.adjust(domid, extra=-len(mfns))

    # -- domains --------------------------------------------------------------------------

    @staticmethod
    def _check_domid(domid: int) -> None:
        if type(domid) is not int or not 0 <= domid < DOMID_FIRST_RESERVED:
            raise BadDomid(domid)

    def create_domain(self, domid: int, *, nr_pages: int, hwdom: bool = False,
                      direct_mapped: bool = False) -> Domain:
        """Build a domain with ``nr_pages`` of RAM.  Direct-mapped: the lowest
        free frames, each at gfn == mfn (the static region is Xen's, so never
        among them).  Otherwise gfns from GUEST_RAM0_BASE up, backed by frames
        drawn at random (seeded) from all of RAM.  All or nothing."""
        self._check_domid(domid)
        if type(nr_pages) is not int or nr_pages <= 0:
            raise BadDomainConfig(domid, "nr_pages", nr_pages, "must be a positive int")
        if not direct_mapped and nr_pages > GUEST_RAM0_SIZE >> PAGE_SHIFT:
            raise BadDomainConfig(domid, "nr_pages", nr_pages, "larger than GUEST_RAM0")
        frames, reg = self._frames, self._registry
        with self._lock:
            entry = reg.entry(domid)
            if entry.state is not DomainState.FREE:
                raise DomainExists(domid, entry.state.name.lower(), entry.zombie_pages)
            if hwdom and reg.hwdom != DOMID_INVALID:
                raise HwdomExists(domid, reg.hwdom)
            if frames.nr_free < nr_pages:
                raise OutOfFrames(domid, nr_pages, frames.nr_free)
            generation = reg.last_generation + 1  # taken for real at commit
            if direct_mapped:
                mfns = frames.pick_lowest(nr_pages)
                gfns: Iterable[int] = mfns
                # The p2m covers all of machine RAM (static shm included).
                blocks = _blocks(range(self.first_mfn, self.last_mfn + 1))
            else:
                rng = random.Random(f"stubdom.xen:{self.seed}:domain:{domid}:{generation}")
                mfns = frames.pick_scattered(nr_pages, rng)
                first = GUEST_RAM0_BASE >> PAGE_SHIFT
                gfns = range(first, first + nr_pages)
                blocks = _blocks(gfns)
            path = _p2m_path(self.path, domid)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.unlink(missing_ok=True)  # left by a process that died here
            p2m = P2mFile.create(tmp, domid=domid, generation=generation,
                                 capacity=len(blocks) + P2M_SPARE_TABLES)
            try:
                p2m.ensure_tables(blocks)
                for gfn, mfn in zip(gfns, mfns, strict=True):
                    p2m.set_word(gfn, encode_entry(mfn, P2mType.p2m_ram_rw))
                os.replace(tmp, path)
            except BaseException:
                p2m.close()
                tmp.unlink(missing_ok=True)
                raise
            # Commit: nothing below can fail.
            self._scrub(frames.assign(mfns, domid))
            reg.next_generation()
            flags = (FLAG_HWDOM if hwdom else 0) | (FLAG_DIRECT_MAPPED if direct_mapped else 0)
            reg.make_live(domid, flags, generation, nr_pages)
            if hwdom:
                reg.set_hwdom(domid)
            dom = Domain(self, domid, hwdom, direct_mapped, generation, p2m)
            old = self._domains.pop(domid, None)
            if old is not None:
                self._retired.add(old)
            self._domains[domid] = dom
        return dom

    def domain(self, domid: int) -> Domain:
        """A handle on live domain ``domid`` (created by any process)."""
        self._check_domid(domid)
        state, _flags, gen = decode_control(self._registry.control(domid))
        dom = self._domains.get(domid)
        if state is DomainState.LIVE and dom is not None and dom.generation == gen:
            return dom
        with self._lock:
            return self._domain_locked(domid)

    def _domain_locked(self, domid: int) -> Domain:
        entry = self._registry.entry(domid)
        if entry.state is not DomainState.LIVE:
            raise NoSuchDomain(domid, entry.state.name.lower())
        dom = self._domains.get(domid)
        if dom is not None and dom.generation == entry.generation:
            return dom
        p2m = P2mFile.open(_p2m_path(self.path, domid))
        if p2m.generation != entry.generation or p2m.domid != domid:
            p2m.close()
            raise MachineFormatError(str(_p2m_path(self.path, domid)),
                                     f"p2m is d{domid} generation {p2m.generation}, "
                                     f"registry says {entry.generation}")
        if dom is not None:
            self._retired.add(dom)
        dom = Domain(self, domid, entry.is_hwdom, entry.direct_mapped, entry.generation, p2m)
        self._domains[domid] = dom
        return dom

    def domains(self) -> list[int]:
        """Live domain ids, ascending."""
        return self._registry.with_state(DomainState.LIVE)

    def dying_domains(self) -> dict[int, int]:
        """{domid: frames still pinned} of destroyed domains that linger."""
        reg = self._registry
        return {d: reg.entry(d).zombie_pages for d in reg.with_state(DomainState.DYING)}

    def destroy_domain(self, domid: int) -> None:
        """Relinquish every page of the domain (Xen's domain_relinquish_resources):
        the p2m is emptied and deleted, unpinned frames are freed, pinned
        ones become zombies freed by their last put_page.  While zombies
        remain, the domain is "dying" and its id cannot be reused."""
        self._check_domid(domid)
        frames, reg = self._frames, self._registry
        with self._lock:
            dom = self._domain_locked(domid)
            p2m = dom._p2m
            freed = zombies = 0
            for gfn, word in list(p2m.mapped()):
                p2m.clear(gfn)
                if P2mType(word & P2M_TYPE_MASK) not in RAM_TYPES:
                    continue
                mfn = word >> PAGE_SHIFT
                if not self.first_mfn <= mfn <= self.last_mfn:
                    continue
                owner, state = frames.describe(mfn)
                if owner == domid and state == "allocated":
                    if frames.give_back(mfn):
                        freed += 1
                    else:
                        zombies += 1
            p2m.mark_dead()
            reg.adjust(domid, tot=-(freed + zombies), zombie=zombies)
            # Extra (domheap) pages its users did not free: relinquished too.
            extra = frames.extra_frames(domid) if reg.entry(domid).extra_pages else []
            extra_zombies = sum(not frames.give_back(mfn) for mfn in extra)
            reg.adjust(domid, extra=-len(extra), zombie=extra_zombies)
            entry = reg.entry(domid)
            if entry.tot_pages or entry.extra_pages:
                # Teardown invariant: every frame the domain owned was found.
                raise MachineError(f"d{domid}: {entry.tot_pages} RAM and {entry.extra_pages} "
                                   "extra frames still owned after relinquish")
            reg.set_state(domid, DomainState.DYING if entry.zombie_pages else DomainState.FREE)
            if entry.is_hwdom:
                reg.set_hwdom(DOMID_INVALID)
            _p2m_path(self.path, domid).unlink()
            self._retired.add(self._domains.pop(domid))
