"""structlog configured once: JSON off a TTY, pretty on one, contextvars first.

The libraries' own log records (asyncpg's pool, aiokafka, uvicorn: the standard
library's `logging`) go through the same renderer to the same stream, one line
each with the traceback in its `exception` field, and so do Python's warnings
(`warnings.warn`): with LOG_FORMAT=json every line the process logs is JSON, which
a log pipeline can parse (a plain traceback on stderr arrives as one entry per
line). A command's own refusal (`error: ...`, exit 2) stays one plain line on stderr.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import structlog


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
    handler = _LibraryLogHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    # a second call replaces its own handler; others (a test runner's) stay
    for old in [h for h in root.handlers if isinstance(h, _LibraryLogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    # warnings.warn (a library's deprecation, "coroutine ... was never awaited") would
    # write plain text to stderr: the logger py.warnings takes them instead
    logging.captureWarnings(True)
    # the libraries' warnings and errors; their info lines are per request or fetch
    root.setLevel(max(numeric, logging.WARNING))


class _LibraryLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root logger's handler this module installs (told apart from others)."""


class _FrameworkLogHandler(logging.Handler):
    """Framework log records into the service's log, errors also into a counter."""

    def __init__(self, on_error: Callable[[str], None]) -> None:
        super().__init__(level=logging.WARNING)
        self._on_error = on_error
        self._log = structlog.get_logger("healthscore.framework")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.ERROR:
                self._on_error(record.name)
                self._log.error(
                    "framework_error",
                    source=record.name,
                    message=record.getMessage(),
                    exc_info=record.exc_info,
                )
            else:
                self._log.warning(
                    "framework_warning", source=record.name, message=record.getMessage()
                )
        except Exception:
            self.handleError(record)


def framework_logger(on_error: Callable[[str], None]) -> logging.Logger:
    """The logger FastStream gets: never muted, its errors logged and counted.

    Its per-batch INFO lines stay out; warnings and errors (an exception in the
    consume loop, a failed fetch) reach the log and `on_error`.
    """
    # not from the registry: each service instance counts into its own metrics
    logger = logging.Logger("faststream", level=logging.WARNING)
    logger.propagate = False
    logger.addHandler(_FrameworkLogHandler(on_error))
    return logger
