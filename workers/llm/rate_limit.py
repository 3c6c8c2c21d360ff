"""Async token buckets for requests- and tokens-per-minute limits."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Capacity ``rate_per_minute`` refilled continuously; ``acquire(n)`` waits until n are available."""

    def __init__(self, rate_per_minute: float | None):
        self.rate = None if rate_per_minute is None else rate_per_minute / 60.0
        self.capacity = rate_per_minute or 0.0
        self.level = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, n: float = 1.0) -> None:
        if self.rate is None:
            return
        n = min(n, self.capacity)  # a single oversized request must still get through eventually
        async with self._lock:
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= n:
                    self.level -= n
                    return
                await asyncio.sleep((n - self.level) / self.rate)

    def refund(self, n: float) -> None:
        """Return over-reserved tokens (the estimate was larger than the real usage)."""
        if self.rate is not None:
            self.level = min(self.capacity, self.level + max(n, 0.0))
