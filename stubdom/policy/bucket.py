"""A token bucket driven by the caller's clock.

Deterministic: the bucket never reads a clock; each call passes ``now``
(seconds, any monotonic origin).  Tokens are kept as integers in units of
10**-9 token and time in integer nanoseconds, so refills do not drift with
float rounding (10 calls/s over 0.1 s is exactly one token).
"""

from __future__ import annotations

__all__ = ["TokenBucket"]

_NANO = 10**9


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; starts full."""

    __slots__ = ("rate", "burst", "_tokens", "_last_ns")

    def __init__(self, rate: float, burst: int, now: float, *, tokens: float | None = None) -> None:
        if not rate > 0 or type(burst) is not int or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got {rate!r}, {burst!r}")
        self.rate = rate
        self.burst = burst
        start = burst if tokens is None else min(max(tokens, 0.0), burst)
        self._tokens = int(start * _NANO)
        self._last_ns = _ns(now)

    def reconfigured(self, rate: float, burst: int) -> TokenBucket:
        """A bucket with a new rate and burst that keeps this one's tokens
        (capped at the new burst) and its clock."""
        b = TokenBucket(rate, burst, self._last_ns / _NANO)
        b._tokens = min(self._tokens, burst * _NANO)
        b._last_ns = self._last_ns
        return b

    def _refill(self, now: float) -> None:
        now_ns = _ns(now)
        if now_ns <= self._last_ns:
            return  # a clock that went backwards refills nothing
        gained = int((now_ns - self._last_ns) * self.rate)
        self._tokens = min(self.burst * _NANO, self._tokens + gained)
        self._last_ns = now_ns

    def take(self, now: float) -> bool:
        """Take one token at time ``now``; False when the bucket is empty."""
        self._refill(now)
        if self._tokens >= _NANO:
            self._tokens -= _NANO
            return True
        return False

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (refills first)."""
        self._refill(now)
        return self._tokens / _NANO


def _ns(t: float) -> int:
    return round(t * _NANO)
