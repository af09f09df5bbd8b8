"""Capped exponential backoff with jitter: the one retry policy of the agent."""

from __future__ import annotations

import random


class Backoff:
    """Delays min, 2*min, 4*min ... up to max, each spread by +-jitter so that many agents
    (or devices) that lost the same switch do not retry in lock-step."""

    def __init__(self, minimum: float, maximum: float, *, factor: float = 2.0, jitter: float = 0.2,
                 rng: random.Random | None = None) -> None:
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        base = min(self.maximum, self.minimum * self.factor**self._attempt)
        self._attempt += 1
        return min(self.maximum, base * (1 + self._rng.uniform(-self.jitter, self.jitter)))

    def reset(self) -> None:
        self._attempt = 0
