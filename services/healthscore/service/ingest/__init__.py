"""From Kafka records to applied batches: decoding, rejection, batch processing."""
