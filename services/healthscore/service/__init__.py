"""The running service: consumers, the batch pipeline, the outbox relay, the
silence sweep, the projector and ops, wiring the core to the store and Kafka."""
