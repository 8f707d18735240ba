"""api-bench's CPU figures: per request from two samples of /proc."""

from __future__ import annotations

import os
import sys

import pytest

from healthscore_lab.api_bench import (
    CpuMeter,
    CpuSample,
    DashboardUser,
    cache_figures,
    cpu_figures,
    organization_page,
)


def test_cpu_per_request_and_cores_from_two_samples() -> None:
    before = CpuSample(
        at=10.0,
        api=1.0,
        pg_api=2.0,
        pg_total=3.0,
        client=0.5,
        consumer=1.0,
        broker=0.1,
        machine=20.0,
    )
    after = CpuSample(
        at=12.0,
        api=1.5,
        pg_api=2.8,
        pg_total=4.0,
        client=0.7,
        consumer=1.6,
        broker=0.3,
        machine=23.6,
    )
    figures = cpu_figures(before, after, requests=250)
    assert figures["api_cpu_us"] == 2000  # 0.5 s over 250 requests
    assert figures["pg_api_cpu_us"] == 3200
    assert figures["pg_cores"] == 0.5  # 1 s of CPU in 2 s
    assert figures["client_cores"] == 0.1
    assert figures["consumer_cores"] == 0.3
    assert figures["broker_cores"] == 0.1
    assert figures["machine_cores"] == 1.8
    assert cpu_figures(before, None, 250) == {} and cpu_figures(before, after, 0) == {}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_meter_reads_this_process() -> None:
    meter = CpuMeter([os.getpid()], postmaster=None)
    first = meter.sample()
    sum(i * i for i in range(200_000))  # burn a little CPU
    second = meter.sample()
    assert first is not None and second is not None
    assert second.api >= first.api and second.client >= first.client
    assert second.machine >= first.machine and second.at > first.at


def test_cache_hit_ratio_from_two_scrapes() -> None:
    zero = {"miss_absent": 0.0, "miss_changed": 0.0, "miss_expired": 0.0}
    zero |= {"unkept_moved": 0.0, "unkept_not_serving": 0.0, "unkept_clock": 0.0}
    zero |= {"evictions": 0.0, "refreshes": 0.0}
    before = {"hit": 10.0, "lagging": 0.0, "shared": 0.0, "miss": 5.0, "bypass": 0.0, **zero}
    after = {"hit": 75.0, "lagging": 10.0, "shared": 10.0, "miss": 15.0, "bypass": 5.0}
    after |= zero | {"miss_absent": 4.0, "miss_changed": 6.0, "unkept_moved": 1.0}
    after |= {"evictions": 2.0, "refreshes": 3.0}
    assert cache_figures(before, after) == {
        "cache_hit_ratio": 0.85,  # 65 hits, 10 lagging and 10 shared of 100 requests
        "cache_lagging": 10,
        "cache_refreshes": 3,
        "cache_misses": 10,
        "cache_bypassed": 5,
        "cache_misses_absent": 4,
        "cache_misses_changed": 6,
        "cache_misses_expired": 0,
        "cache_unkept_moved": 1,
        "cache_unkept_not_serving": 0,
        "cache_unkept_clock": 0,
        "cache_evictions": 2,
    }
    assert cache_figures(before, before) == {}


def test_a_dashboard_user_refreshes_an_open_page_then_opens_another() -> None:
    hot_set = [f"org-{n}" for n in range(50)]
    user = DashboardUser(hot_set, organization_page, refreshes=4)
    asked = [user() for _ in range(500)]
    visits = [asked[i : i + 5] for i in range(0, 500, 5)]
    # each visit: the page opened, then refreshed four times
    assert all(len(set(visit)) == 1 for visit in visits)
    assert {visit[0] for visit in visits} <= {organization_page(o) for o in hot_set}
    assert len({visit[0] for visit in visits}) > 20  # the user moves around the list
