"""The pure core: scoring, milestones, interactions, bands, a batch's effects and
the event-time alignment. No I/O and no framework types."""
