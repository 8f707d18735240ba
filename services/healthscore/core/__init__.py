"""The pure core: scoring, milestones, interactions, bands, a batch's effects and
the event-time alignment. No I/O and no framework types: its inputs are the
msgspec structs of `events` (built by the service's decoder), its outputs
msgspec structs and dataclasses, its vocabulary the enumerations of `enums`
(which the wire contract uses too). tests/unit/test_layers.py holds it to that."""
