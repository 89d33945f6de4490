"""When a retrain runs: missed schedule slots collapse into one run, and one retrain of a model runs
at a time, both decided by the Prefect API.

A scheduled run of the retrain deployment asks whether a later scheduled slot of its deployment is
already due; if so it ends at once ("superseded") and the latest slot does the work. Every run, of
the deployment or in a process of its own (`sensorcast retrain` when no runner serves the
deployment), then takes the model's one retrain slot, a Prefect global concurrency limit: a second
run waits for the first. The flow (flows/retrain.py) imports this; flows/schedule.py, which builds
the deployment, imports the flow.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    id: str
    expected_start: dt.datetime
    scheduled: bool  # a run of the schedule (not an on-demand or drift run)
    failed: bool = False  # failed, crashed or cancelled: it will never retrain, so it supersedes nothing


GAVE_UP = ("FAILED", "CRASHED", "CANCELLED", "CANCELLING")  # Prefect state types of a run that will not retrain


def superseded(me: Slot, others: list[Slot], now: dt.datetime) -> bool:
    """A scheduled run gives way when another scheduled slot of its deployment, later than its own,
    is already due: that one will train on fresher data.

    >>> t = dt.datetime(2026, 11, 26, tzinfo=dt.timezone.utc)
    >>> slots = [Slot(str(h), t + dt.timedelta(hours=h), True) for h in range(3)]
    >>> [superseded(s, slots, t + dt.timedelta(hours=5)) for s in slots]
    [True, True, False]
    >>> superseded(slots[0], slots, t + dt.timedelta(minutes=30))  # the next slot is not due yet
    False
    >>> cancelled = Slot("2", slots[2].expected_start, True, failed=True)  # it will never retrain
    >>> superseded(slots[1], [slots[1], cancelled], t + dt.timedelta(hours=5))
    False
    """
    if not me.scheduled:
        return False
    return any(
        o.id != me.id and o.scheduled and not o.failed and me.expected_start < o.expected_start <= now for o in others
    )


def later_slot_is_due(page: int = 200) -> bool:
    """Ask the Prefect API about this run's deployment (False outside a deployment run): only the
    runs whose expected start lies between this run's and now, none that gave up, latest first, a
    page at a time (the server pages at 200; a deployment's history can be far longer)."""
    from prefect import runtime
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    deployment_id = runtime.deployment.id
    if not deployment_id or runtime.flow_run.parameters.get("trigger") != "schedule":
        return False
    now = dt.datetime.now(dt.UTC)
    with get_client(sync_client=True) as client:
        mine = client.read_flow_run(runtime.flow_run.id)
        if mine.expected_start_time is None:
            return False
        me = Slot(str(mine.id), mine.expected_start_time, True)
        between = FlowRunFilter(
            expected_start_time=FlowRunFilterExpectedStartTime(after_=me.expected_start, before_=now),
            state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=list(GAVE_UP))),
        )
        offset = 0
        while True:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=between,
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=page,
                offset=offset,
            )
            slots = [
                Slot(
                    str(r.id),
                    r.expected_start_time,
                    r.parameters.get("trigger") == "schedule",
                    r.state is not None and r.state.type.value in GAVE_UP,
                )
                for r in runs
                if r.expected_start_time is not None
            ]
            if superseded(me, slots, now):
                return True
            if len(runs) < page:
                return False
            offset += page


def retrain_limit(model_name: str) -> str:
    """The Prefect global concurrency limit that lets one retrain of `model_name` run at a time."""
    return f"sensorcast-retrain-{model_name}"


@contextmanager
def one_retrain_at_a_time(model_name: str, log: logging.Logger | logging.LoggerAdapter) -> Iterator[None]:
    """Hold the model's retrain slot (limit 1, made on first use) while the body runs; if another
    retrain holds it, say so and wait. A crashed holder's lease expires (Prefect renews it while the
    holder lives), so a dead run never blocks the next one for good."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    name = retrain_limit(model_name)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    with ExitStack() as held:
        try:
            held.enter_context(concurrency(name, occupy=1, timeout_seconds=2, strict=True))
        except TimeoutError:
            log.info("another retrain of %s runs now: this one waits for it to end", model_name)
            held.enter_context(concurrency(name, occupy=1, strict=True))
        yield
