"""Operability: logging, metrics, health endpoints, lag."""
