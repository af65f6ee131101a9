"""Guest-triggerable log lines are rate-limited per domain (virtual clock)."""

import logging

from stubdom.mediator import RateLimitedLog


def test_burst_then_refill_and_suppressed_count(caplog):
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("t.ratelog"), "d1: ", burst=3, refill=1.0,
                         clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t.ratelog"):
        for i in range(10):
            log.warning("bad thing %d", i)
        assert (log.emitted, log.suppressed) == (3, 7)
        now[0] += 1.0
        log.warning("after refill")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["d1: bad thing 0", "d1: bad thing 1", "d1: bad thing 2",
                     "d1: after refill (7 similar lines suppressed)"]


def test_domains_have_separate_buckets():
    now = [0.0]
    a = RateLimitedLog(logging.getLogger("t.a"), "d1: ", burst=1, refill=10.0, clock=lambda: now[0])
    b = RateLimitedLog(logging.getLogger("t.b"), "d2: ", burst=1, refill=10.0, clock=lambda: now[0])
    for _ in range(5):
        a.error("flood")
    b.error("one line")
    assert (a.emitted, a.suppressed, b.emitted) == (1, 4, 1)


# -- wired into the mediator core --------------------------------------------------------

def _flood_platform(tmp_path, logger, clock):
    from stubdom.platform import DomainSpec, Platform
    from stubdom.platform.el2 import El2Placement
    from stubdom.tee import TeeConfig

    p = Platform(tmp_path / "m", nr_frames=16384, tee_config=TeeConfig(),
                 placement=lambda p: El2Placement(p, logger=logger, log_clock=clock))
    for domid in (1, 2):
        p.create_domain(DomainSpec(domid, nr_pages=64))
    return p


def test_a_flood_of_bad_calls_logs_a_bounded_number_of_lines(tmp_path, caplog):
    from stubdom.mediator.limits import LOG_BURST, LOG_REFILL_SECONDS
    from stubdom.optee import OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_RETURN_EBADADDR

    now = [100.0]
    logger = logging.getLogger("t.mediator.flood")
    unmapped = 0x7000_0000_0000  # page aligned, nothing mapped there: EBADADDR and a log line
    bad = (OPTEE_SMC_CALL_WITH_ARG, unmapped >> 32, unmapped & 0xFFFFFFFF, 0, 0, 0, 0, 0)
    with caplog.at_level(logging.WARNING, logger="t.mediator.flood"), \
            _flood_platform(tmp_path, logger, lambda: now[0]) as p:
        for _ in range(1000):
            assert p.trap(1, 0, bad)[0] == OPTEE_SMC_RETURN_EBADADDR
        d1 = [r.getMessage() for r in caplog.records if r.getMessage().startswith("d1: ")]
        assert len(d1) == LOG_BURST
        # Another domain has its own bucket.
        p.trap(2, 0, bad)
        assert sum(r.getMessage().startswith("d2: ") for r in caplog.records) == 1
        # Time passes (virtual clock): one more line, carrying the count.
        now[0] += LOG_REFILL_SECONDS
        p.trap(1, 0, bad)
        d1 = [r.getMessage() for r in caplog.records if r.getMessage().startswith("d1: ")]
        assert len(d1) == LOG_BURST + 1
        assert d1[-1].endswith(f"({1000 - LOG_BURST} similar lines suppressed)")


def test_internal_errors_are_rate_limited_too(tmp_path, caplog):
    from stubdom.mediator.limits import LOG_BURST
    from stubdom.optee import OPTEE_SMC_CALLS_REVISION, OPTEE_SMC_RETURN_ENOMEM

    now = [0.0]
    logger = logging.getLogger("t.mediator.bug")
    with caplog.at_level(logging.WARNING, logger="t.mediator.bug"), \
            _flood_platform(tmp_path, logger, lambda: now[0]) as p:
        mediator = p.placement.mediator

        def broken(ctx, vcpu, regs):
            raise RuntimeError("a mediator bug")

        mediator._dispatch[OPTEE_SMC_CALLS_REVISION] = broken
        for _ in range(200):
            assert p.trap(1, 0, (OPTEE_SMC_CALLS_REVISION,) + (0,) * 7) == (OPTEE_SMC_RETURN_ENOMEM,) + (0,) * 7
        assert len(caplog.records) == LOG_BURST and caplog.records[0].exc_info is not None
        assert mediator.context(1).internal_errors == 200
