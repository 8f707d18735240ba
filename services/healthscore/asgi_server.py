"""uvicorn as both HTTP processes run it: the caller, not the server, handles signals."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn


class SignalFreeServer(uvicorn.Server):
    """uvicorn without its own signal handling: the caller decides when to stop.

    uvicorn would install SIGINT/SIGTERM handlers for itself and raise the signal
    again on exit; `healthscore serve` and `healthscore api` handle them for the
    whole process.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
