"""The daemon's own operation counts (``stats`` → ``mediator_ops``,
docs/control-protocol.md): counted by the mediator core in the daemon's
process, per domain and in total, moving by exactly what a known call does
— and by exactly what the same call moves under el2, where the same core
counts in the platform process. Nothing here is timed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from daemon_support import boot, client, running_stack, write_config
from stubdom.config import load_config
from stubdom.mediator import MEDIATOR_OPS
from stubdom.platform import Platform
from stubdom.xen import PAGE_SIZE

N = 5  # pages of the registered buffer


@pytest.fixture
def stack(tmp_path):
    """(config path, Config, Platform, Daemon): platform first, then the daemon."""
    yield from running_stack(tmp_path)


def _delta(before: dict, after: dict) -> dict:
    return {op: after[op] - before[op] for op in MEDIATOR_OPS}


def _register_unregister(driver, snap: Callable[[], dict]) -> tuple[dict, dict]:
    """One REGISTER_SHM of N pages, then its UNREGISTER_SHM (the guest's
    page allocation stays outside both): the counts each call moved."""
    pages = driver.pages.alloc(N)
    try:
        s0 = snap()
        shm = driver.register_pages(pages, 0, N * PAGE_SIZE)
        s1 = snap()
        driver.free_shm(shm)
        s2 = snap()
    finally:
        driver.pages.free(pages)
    return _delta(s0, s1), _delta(s1, s2)


def test_stats_answers_mediator_ops_per_domain_and_in_total(stack):
    _, config, platform, _ = stack
    drivers = {d: boot(platform, config, d) for d in (1, 2)}
    with client(config) as c:
        answer = c.call("stats")
        assert set(answer["mediator_ops"]) == set(MEDIATOR_OPS)
        for d in ("1", "2"):
            ops = answer["domains"][d]["mediator_ops"]
            assert set(ops) == set(MEDIATOR_OPS)
            # domain_create pinned the domain's shadow pages (2 per call in flight)
            assert ops["pages_pinned"] > 0 and ops["pages_unpinned"] == 0

        def snap() -> dict:
            got = c.call("stats")
            return {"d1": got["domains"]["1"]["mediator_ops"], "d2": got["domains"]["2"]["mediator_ops"],
                    "total": got["mediator_ops"]}

        s0 = snap()
        reg, unreg = _register_unregister(drivers[1], lambda: snap()["d1"])
        s1 = snap()
    # REGISTER_SHM of N pages pins exactly N, its UNREGISTER unpins exactly N
    assert reg["pages_pinned"] == N and reg["pages_unpinned"] == 0, reg
    assert unreg["pages_pinned"] == 0 and unreg["pages_unpinned"] == N, unreg
    # one look-up per page of the buffer and one for the argument (both
    # calls); at least the page list (one page) is copied in
    assert reg["p2m_lookups"] == N + 1 and unreg["p2m_lookups"] == 1, (reg, unreg)
    assert reg["bytes_copied"] >= PAGE_SIZE, reg
    # the other domain's counts did not move; the totals moved by domain 1's
    assert _delta(s0["d2"], s1["d2"]) == dict.fromkeys(MEDIATOR_OPS, 0)
    assert _delta(s0["total"], s1["total"]) == _delta(s0["d1"], s1["d1"])
    assert _delta(s0["d1"], s1["d1"]) == {op: reg[op] + unreg[op] for op in MEDIATOR_OPS}
    for driver in drivers.values():
        driver.shutdown()


def test_a_domain_counts_survive_its_destruction_and_teardown_unpins_count(stack):
    """``since the daemon started``: a destroyed domain's teardown unpins
    are in the totals, and the domid served again goes on from there."""
    _, config, platform, _ = stack
    driver = boot(platform, config, 1)
    with client(config) as c:
        created = c.call("stats", domid=1)["domains"]["1"]["mediator_ops"]
        driver.shutdown()
        platform.destroy_domain(1)
        total = c.call("stats")["mediator_ops"]
        # everything domain_create pinned (shadow pages) was unpinned by the teardown
        assert total["pages_unpinned"] == total["pages_pinned"] == created["pages_pinned"]
        driver = boot(platform, config, 1)
        again = c.call("stats", domid=1)["domains"]["1"]["mediator_ops"]
        assert again["pages_pinned"] == 2 * created["pages_pinned"]
        assert again["pages_unpinned"] == created["pages_pinned"]
    driver.shutdown()


@pytest.fixture
def el2(tmp_path):
    """The same configuration under ``placement: el2``: the mediator core in
    this process, its counts read from it directly."""
    root = tmp_path / "el2"  # beside the stub-domain stack's runtime directory
    root.mkdir()
    path = write_config(root)
    path.write_text(path.read_text().replace("placement: stubdom", "placement: el2"))
    config = load_config(path)
    platform = Platform.for_config(config)
    try:
        yield config, platform
    finally:
        for domid in platform.domids():
            platform.destroy_domain(domid)
        platform.close()


def test_the_same_call_counts_the_same_under_el2_and_in_the_daemon(stack, el2):
    """Same mediator core, same guest, same call: same counts, whichever
    process the core runs in (no placement's numbers are copied)."""
    _, config, platform, _ = stack
    el2_config, el2_platform = el2
    assert el2_config.mediator.placement == "el2" and el2_config.mediator.profile == config.mediator.profile
    driver = boot(platform, config, 1)
    el2_driver = boot(el2_platform, el2_config, 1)
    with client(config) as c:
        stub = _register_unregister(driver, lambda: c.call("stats", domid=1)["domains"]["1"]["mediator_ops"])
    mediator = el2_platform.placement.mediator
    here = _register_unregister(el2_driver, lambda: mediator.op_counts(1))
    assert stub == here
    assert here[0]["pages_pinned"] == here[1]["pages_unpinned"] == N
    driver.shutdown()
    el2_driver.shutdown()
