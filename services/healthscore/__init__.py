"""Real-time customer health scoring service."""

__version__ = "0.1.0"
