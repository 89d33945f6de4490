"""Missed schedule slots collapse into one run, pure apart from one Prefect API read.

A scheduled run of the retrain deployment asks whether a later scheduled slot of its deployment is
already due; if so it ends at once ("superseded") and the latest slot does the work. The flow
(flows/retrain.py) imports this; flows/schedule.py, which builds the deployment, imports the flow.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    id: str
    expected_start: dt.datetime
    scheduled: bool  # a run of the schedule (not an on-demand or drift run)


def superseded(me: Slot, others: list[Slot], now: dt.datetime) -> bool:
    """A scheduled run gives way when another scheduled slot of its deployment, later than its own,
    is already due: that one will train on fresher data.

    >>> t = dt.datetime(2026, 11, 26, tzinfo=dt.timezone.utc)
    >>> slots = [Slot(str(h), t + dt.timedelta(hours=h), True) for h in range(3)]
    >>> [superseded(s, slots, t + dt.timedelta(hours=5)) for s in slots]
    [True, True, False]
    >>> superseded(slots[0], slots, t + dt.timedelta(minutes=30))  # the next slot is not due yet
    False
    """
    if not me.scheduled:
        return False
    return any(o.id != me.id and o.scheduled and me.expected_start < o.expected_start <= now for o in others)


def later_slot_is_due() -> bool:
    """Ask the Prefect API about this run's deployment (False outside a deployment run)."""
    from prefect import runtime
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deployment_id = runtime.deployment.id
    if not deployment_id or runtime.flow_run.parameters.get("trigger") != "schedule":
        return False
    now = dt.datetime.now(dt.UTC)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    slots = [
        Slot(str(r.id), r.expected_start_time, r.parameters.get("trigger") == "schedule")
        for r in runs
        if r.expected_start_time is not None
    ]
    me = next((s for s in slots if s.id == str(runtime.flow_run.id)), None)
    return me is not None and superseded(me, slots, now)
