"""Small fakes the unit tests share: a clock to set by hand, a readiness check that counts."""

from __future__ import annotations


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Counted:
    """A check that answers `answer` and counts its calls."""

    def __init__(self, answer: str | None = None) -> None:
        self.answer = answer
        self.calls = 0

    async def __call__(self) -> str | None:
        self.calls += 1
        return self.answer
