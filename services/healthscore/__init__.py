"""Real-time customer health scoring service."""

from healthscore.compiled import check_compiled_sources

__version__ = "0.1.0"

check_compiled_sources()
