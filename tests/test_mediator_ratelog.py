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
