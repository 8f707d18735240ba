"""The pure functional core: aggregates + as_of + model config -> score, alerts.

Nothing in this package does I/O or reads the clock; every time is an event
time in POSIX seconds. Modules:

- `model`: the versioned model config (`load_model`, `default_model`).
- `state`: the per-organization aggregate document.
- `aggregate`: O(1) updates of the state per usage or support event.
- `score`: the score function (formulas documented there).
- `alerts`: the churn-risk alert episode state machine.
"""
