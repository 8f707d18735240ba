"""The simulator: synthetic event streams for the demo, the tests, the bench and evaluation.

One package, one public API (import from here, or from the module named):

* `catalogue`: profiles, features, usage and support weights, the time shape,
  and the helpers every generator shares (ids, times, splits, Zipf ranks);
* `organizations`: `Organization`, drawn one way; `scripted_organizations`
  (the demo's and tests' population) and `Organizations`, the lazy population
  built on demand from (seed, index) for any number of organizations;
* `events`: `Timeline`, `Planner` (milestones, support interactions) and
  `BodyWriter` (the contracts' JSON bodies);
* `messages`: `SimulatedMessage`, duplicates, malformed ones, counts;
* `stream`: `generate(SimulationConfig)`, the stream of the demo and the tests;
* `workload`: the bench's shapes over the lazy population: `Workload`
  (a historical stream, uniform or Zipf-skewed) and `LiveStream` (events that
  happen now, and alert triggers);
* `labelled`: the labelled population (latent health, churn outcomes,
  profiles) for `healthscore evaluate` and `fit`;
* `kafka`: `produce`, the only I/O: send a stream to the input topics, paced
  by an optional rate.

Every stream is a pure function of its config and seed: the same config gives
the same bytes (tests/unit/test_simulator_pinned.py holds them to it).
"""

from healthscore_lab.simulator.catalogue import PROFILES, TopicKind, to_ms, zipf_rank
from healthscore_lab.simulator.kafka import ProduceStats, produce
from healthscore_lab.simulator.messages import SimulatedMessage, StreamCounts
from healthscore_lab.simulator.organizations import Organization, Organizations
from healthscore_lab.simulator.stream import SimulationConfig, generate, organization_profiles
from healthscore_lab.simulator.workload import (
    LiveStream,
    Workload,
    WorkloadConfig,
    WorkloadCounts,
)

__all__ = [
    "PROFILES",
    "LiveStream",
    "Organization",
    "Organizations",
    "ProduceStats",
    "SimulatedMessage",
    "SimulationConfig",
    "StreamCounts",
    "TopicKind",
    "Workload",
    "WorkloadConfig",
    "WorkloadCounts",
    "generate",
    "organization_profiles",
    "produce",
    "to_ms",
    "zipf_rank",
]
