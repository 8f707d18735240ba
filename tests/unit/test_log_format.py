"""With LOG_FORMAT=json every line the process writes is one JSON object: the service's
own events and the libraries' (asyncpg, aiokafka, uvicorn log through the standard
library), tracebacks included."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator

import pytest
import structlog

from healthscore.service.ops.logging import configure_logging


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def test_library_records_and_their_tracebacks_are_json_lines(
    capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    configure_logging("INFO", "json")
    configure_logging("INFO", "json")  # again: one handler, not two
    structlog.get_logger("healthscore.test").info("service_event", n=1)
    library = logging.getLogger("asyncpg.pool")
    library.info("per-connection chatter")  # below the libraries' level: not shown
    try:
        raise ConnectionRefusedError("connection refused")
    except ConnectionRefusedError:
        library.exception("error on connection %s", 3)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    service, failure = (json.loads(line) for line in lines)
    assert service["event"] == "service_event" and service["n"] == 1
    assert failure["event"] == "error on connection 3"
    assert failure["logger"] == "asyncpg.pool" and failure["level"] == "error"
    assert "Traceback" in failure["exception"]
    assert "ConnectionRefusedError: connection refused" in failure["exception"]
    assert failure["timestamp"].endswith("Z")


def test_a_python_warning_is_a_json_line_too(
    capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    """warnings.warn writes to stderr in plain text unless the logging module takes it
    (a library's deprecation, asyncio's "coroutine was never awaited")."""
    configure_logging("INFO", "json")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("pool size below the floor", UserWarning, stacklevel=1)
    out, err = capsys.readouterr()
    assert err == ""
    (line,) = out.splitlines()
    record = json.loads(line)
    assert record["logger"] == "py.warnings" and record["level"] == "warning"
    assert "UserWarning: pool size below the floor" in record["event"]
