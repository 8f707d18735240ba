"""The lab beside the service: the event simulator, the poison corpus, the demo,
benchmarks, model evaluation and embedded dev services."""
