"""`healthscore replay`: rebuild all derived state from the topics.

A fresh consumer group reads the input topics from the beginning into the
given (empty) database and stops once every partition's stored offset has
reached the high watermark taken at the start. Scores depend on event time
only, so the rebuilt scores, milestones and alert ids equal the live run's.
Alerts land in the outbox but are not published unless asked: the
notification service has seen them already.

With the silence sweep (as `serve` runs by default) the replay makes the same
silence rescorings as the live run: batches rescore an organization's silence
before its next event, and once the log is applied the sweep rescores the
silent organizations up to the log's watermark (see `healthscore.service.sweep`).
`sweep=False` matches a live run with `--no-sweep`.

An interrupted replay (killed, timed out, stopped) resumes with `resume=True`:
its consumer group's offsets are in the database with the effects they
committed, so it continues from them as a restarted service would, and ends
where an uninterrupted replay ends (the event-time alignment makes the
decisions independent of where the batches were cut).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka.errors import KafkaError

from healthscore.config import Settings
from healthscore.core.quality import aggregate_settings, settings_differ
from healthscore.core.scoring.model import load_model
from healthscore.errors import ModelConfigError, StartupRefused
from healthscore.service.app import ServiceOptions, running
from healthscore.service.kafka_clients import KafkaConnection
from healthscore.service.ops.lag import HighWatermarkProbe
from healthscore.store import promotion, sql
from healthscore.store.db import connect, database_tls
from healthscore.store.migrate import apply_migrations
from healthscore.store.offsets import stored_offsets

REPLAY_GROUP_INFIX = "-replay-"


@dataclass
class ReplayResult:
    events_applied: int
    organizations: int
    alerts: int
    seconds: float
    # history rows (organization-days) whose last score is a silence rescoring
    silence_days: int = 0


async def replay(
    settings: Settings,
    publish_alerts: bool = False,
    timeout: float | None = 3600.0,
    group: str | None = None,
    full_gc_every_batches: int = 0,
    sweep: bool = True,
    resume: bool = False,
) -> ReplayResult:
    """Replay the input topics into the empty database `settings` names (or, with
    `resume`, go on with the interrupted replay it holds); `timeout` None: no limit."""
    assert settings.database_url is not None and settings.kafka_bootstrap_servers is not None
    if publish_alerts:
        await _refuse_beside_a_live_service(settings)
    admin_url = (settings.migration_database_url or settings.database_url).get_secret_value()
    tls = database_tls(settings)
    await apply_migrations(admin_url, tls=tls)
    conn = await connect(admin_url, tls)
    try:
        # progress rows too: a replay killed after batches of dead letters only
        organizations = await conn.fetchval(sql.COUNT_ORGANIZATION_STATES)
        groups = [r[0] for r in await conn.fetch(sql.STORED_GROUPS)]
        served = {
            r["version"]: orjson.loads(r["aggregates"])
            for r in await conn.fetch(promotion.SERVED_MODELS)
        }
        resumed = _group_to_replay(settings, organizations, groups, resume, group)
        if resumed is not None:
            _refuse_another_model(settings, served)
        replay_group = resumed or (
            group or f"{settings.consumer_group}{REPLAY_GROUP_INFIX}{uuid.uuid4().hex[:8]}"
        )
        # before its service starts: a replay killed at once is resumed with the same
        if resumed is not None:
            ran = await conn.fetchrow(sql.REPLAY_RUN, resumed)
            if ran is not None:
                _refuse_other_options(
                    ran["silence_sweep"], ran["publish_alerts"], sweep, publish_alerts
                )
        await conn.execute(sql.RECORD_REPLAY_RUN, replay_group, sweep, publish_alerts)
    finally:
        await conn.close()
    topics = settings.input_topics
    async with HighWatermarkProbe(KafkaConnection.from_settings(settings)) as probe:
        targets = await probe.high_watermarks(await probe.partitions(topics))
    # a replay is a catch-up from start to end: aligned throughout, so that it
    # decides in the log's event-time order whatever its fetch sizes
    replay_settings = settings.model_copy(
        update={"consumer_group": replay_group, "alignment_live_lag_records": 0}
    )
    options = ServiceOptions(
        run_relay=publish_alerts,
        run_sweep=sweep,
        publish_health=publish_alerts,
        full_gc_every_batches=full_gc_every_batches,
    )
    started = time.monotonic()
    async with running(replay_settings, options) as service:
        while True:
            conn = await connect(admin_url, tls)
            try:
                stored = await stored_offsets(conn, replay_group)
            finally:
                await conn.close()
            if all(stored.get(tp, 0) >= end for tp, end in targets.items()):
                break
            if timeout is not None and time.monotonic() - started > timeout:
                raise TimeoutError(
                    f"replay did not reach the end of the topics within {timeout:.0f} s: "
                    "what it applied is kept; run it again with --resume to go on"
                )
            await asyncio.sleep(0.2)
        if service.sweep is not None:
            # the whole log is applied: rescore the silence up to its watermark
            await service.sweep.drain()
        if service.projector is not None:
            # and the read model reflects all of it
            await service.projector.drain(timeout=timeout)
    conn = await connect(admin_url, tls)
    try:
        replayed = await conn.fetchrow(sql.REPLAYED)
        assert replayed is not None  # one row, always
    finally:
        await conn.close()
    return ReplayResult(
        replayed["events"],
        replayed["organizations"],
        replayed["alerts"],
        time.monotonic() - started,
        replayed["silence_days"],
    )


def _refuse_other_options(
    ran_sweep: bool, ran_publishing: bool, sweep: bool, publish: bool
) -> None:
    """A resumed replay runs with the options the interrupted one ran with: the silence
    sweep on in one part and off in the other would leave history made under two rules,
    alerts published in one part only would leave the other's unpublished."""
    if (ran_sweep, ran_publishing) == (sweep, publish):
        return

    def flags(with_sweep: bool, publishing: bool) -> str:
        given = [
            f for f, on in (("--no-sweep", not with_sweep), ("--publish-alerts", publishing)) if on
        ]
        return " ".join(given) if given else "neither --no-sweep nor --publish-alerts"

    raise StartupRefused(
        f"replay --resume goes on with the options the interrupted replay ran with "
        f"({flags(ran_sweep, ran_publishing)}); this one was given {flags(sweep, publish)}: "
        "run --resume with the same options, or replay into a new empty database"
    )


def _refuse_another_model(settings: Settings, served: Mapping[str, Mapping[str, Any]]) -> None:
    """A resumed replay scores with the model the interrupted one scored with (the
    versions its service recorded at start, `score_models`): another would leave
    organizations scored, and their decayed sums accumulated, under two models."""
    if not served:
        return  # killed before its service recorded one
    try:
        model = load_model(settings.model_path)
    except ModelConfigError as exc:
        raise StartupRefused(
            f"MODEL_PATH={settings.model_path} is not a usable model: {exc}"
        ) from None
    differ = settings_differ(served.get(model.version, {}), aggregate_settings(model))
    if set(served) != {model.version} or differ:
        raise StartupRefused(
            f"replay --resume goes on with the model the interrupted replay scored with "
            f"(version(s) {', '.join(sorted(served))}); MODEL_PATH={settings.model_path} is "
            f"version {model.version}"
            + (f" with other {', '.join(differ)}" if set(served) == {model.version} else "")
            + ": set MODEL_PATH to that model, or replay into a new empty database"
        )


def live_members(group_name: str, groups: Sequence[Sequence[Any]]) -> int:
    """The members of the live group in a DescribeGroups answer (each group: error code,
    group id, state, protocol type, protocol, members, ...). aiokafka hands back a
    group's error code instead of raising it: an unauthorized describe or a coordinator
    still loading lists no members, which must not read as "the live service is
    stopped", so any error refuses."""
    failed = [group[0] for group in groups if group[0] != 0]
    if failed or not groups:
        raise StartupRefused(
            f"--publish-alerts: cannot tell whether the live service (consumer group "
            f"{group_name!r}) runs: the broker answered "
            f"{f'error code {failed[0]}' if failed else 'no group'} (the replay's login "
            "needs Describe on that group)"
        )
    return sum(len(group[5]) for group in groups)


async def _refuse_beside_a_live_service(settings: Settings) -> None:
    """A replay that publishes is a second sender of alerts (and of the health feed)
    beside the live service's: an organization's replayed alerts would interleave with
    its live ones on the topic, an old `risk_raised` landing after a live `recovered`.
    Refused while the live consumer group has members (the runbook stops it first)."""
    admin = KafkaConnection.from_settings(settings).admin()
    try:
        await admin.start()
        coordinator = await admin.find_coordinator(settings.consumer_group)
        described = await admin.describe_consumer_groups([settings.consumer_group], coordinator)
    except KafkaError as exc:
        raise StartupRefused(
            f"--publish-alerts: cannot tell whether the live service (consumer group "
            f"{settings.consumer_group!r}) runs: {exc!r}"
        ) from exc
    finally:
        await admin.close()
    members = live_members(
        settings.consumer_group, [group for response in described for group in response.groups]
    )
    if members:
        raise StartupRefused(
            f"--publish-alerts while the live service runs ({members} member(s) in consumer "
            f"group {settings.consumer_group!r}): its alerts and the replay's would "
            "interleave on the alert topic; stop the service first (docs/operations.md, "
            "Replay after a model change), or replay without --publish-alerts"
        )


def _group_to_replay(
    settings: Settings,
    organizations: int,
    groups: list[str],
    resume: bool,
    group: str | None = None,
) -> str | None:
    """The consumer group of the interrupted replay to go on with (None: the database
    is empty, replay from the start); refuses any other database. `group`: the replay's
    group was given, not made from CONSUMER_GROUP."""
    if not organizations and not groups:
        return None
    prefix = f"{settings.consumer_group}{REPLAY_GROUP_INFIX}"
    replays = [g for g in groups if (g == group if group else _is_replay_group(prefix, g))]
    if resume and len(replays) == 1 and len(groups) == 1:
        return replays[0]
    if resume:
        others = [g for g in groups if g not in replays]
        why = (
            f"the progress of consumer group(s) {', '.join(others)} (not a replay: the live "
            "database?)"
            if others
            else f"{len(replays)} replays' progress ({', '.join(replays)})"
            if replays
            else f"{organizations} organization state(s) and no replay's progress"
        )
        raise StartupRefused(
            f"replay --resume goes on with the one interrupted replay a database holds; "
            f"DATABASE_URL's holds {why}"
        )
    raise StartupRefused(
        f"replay needs an empty database: DATABASE_URL's has {organizations} organization "
        f"state(s) and the stored offsets of {len(groups)} consumer group(s): replay into a "
        "new empty database, or, if this one holds an interrupted replay, go on with it "
        "(--resume)"
    )


def _is_replay_group(prefix: str, group: str) -> bool:
    """A group `replay` made: CONSUMER_GROUP, -replay-, eight hex digits (a live group
    merely starting with the prefix is not one)."""
    suffix = group.removeprefix(prefix)
    return suffix != group and len(suffix) == 8 and all(c in "0123456789abcdef" for c in suffix)
