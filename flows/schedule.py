"""The retrain deployment: on a schedule, on demand, and never a pile-up of missed slots.

`serve_retrain` serves the deployment from this process (`sensorcast flows serve`); `deploy_to_pool`
registers it on a process work pool whose workers run it instead (`sensorcast flows deploy`, as
docker-compose does). Prefect has no catch-up switch: when the scheduler
was down across several slots, each missed slot's run goes Late and all of them run once something
picks them up. So a scheduled run first asks the API whether a later slot of its deployment is
already due; if so it ends at once ("superseded") and the latest slot does the work: however many
slots were missed, one retrain runs (flows/slots.py, which the flow imports: imports run one way,
flow ← schedule). Runs also queue one at a time (a concurrency limit of 1: a
drift or on-demand run waits for the scheduled one rather than being dropped, as CANCEL_NEW would).

A second deployment, `retrain-search`, runs the same flow with `trials` on a slower interval
(SENSORCAST_SEARCH_EVERY_S, weekly): the configuration is searched again now and then, and the
daily runs carry the champion's configuration between searches (flows/lineage.py).

The retrain deployment carries the drift trigger: Prefect's automation turns each `sensorcast.drift`
event about this model (`sensorcast monitor` emits it) into a run with trigger "drift" and the
event's reason.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.settings import Settings

DEPLOYMENT = "retrain-scheduled"
SEARCH_DEPLOYMENT = "retrain-search"


def deployment_options(settings: Settings) -> dict:
    """What every form of the retrain deployment shares: the settings' schedule (cron, else an
    interval), the schedule's parameters, one run at a time, and the drift trigger."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    from flows.drift import DRIFT_EVENT, drift_resource

    on_drift = DeploymentEventTrigger(
        name=f"retrain {settings.model_name} on drift",
        expect={DRIFT_EVENT},
        match={"prefect.resource.id": drift_resource(settings.model_name)},
        parameters={
            "trigger": "drift",
            "reason": "{{ event.payload.reason }}",
            "hours": settings.retrain_hours,
            "margin": settings.retrain_margin,
        },
    )
    timing = (
        {"interval": settings.retrain_interval_s} if settings.retrain_interval_s else {"cron": settings.retrain_cron}
    )
    return {
        "name": DEPLOYMENT,
        **timing,
        "parameters": {"trigger": "schedule", "hours": settings.retrain_hours, "margin": settings.retrain_margin},
        "concurrency_limit": ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        "triggers": [on_drift],
        "description": "Retrain on the readings topic, gate on the holdout, promote and announce if it wins.",
    }


def search_options(settings: Settings) -> dict | None:
    """The search deployment: the same flow with `trials`, on its own slower interval
    (SENSORCAST_SEARCH_EVERY_S, weekly by default); None when the search is off. Its candidate meets
    the same gate, and it waits for the model's one retrain slot like any other run."""
    if not settings.search_every_s:
        return None
    import datetime as dt

    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Interval

    every = dt.timedelta(seconds=settings.search_every_s)
    first = dt.datetime.now(dt.UTC).replace(microsecond=0) + every  # one interval from now, not at once
    return {
        "name": SEARCH_DEPLOYMENT,
        "schedules": [Interval(every, anchor_date=first, timezone="UTC")],
        "parameters": {
            "trigger": "schedule",
            "reason": f"the scheduled search ({settings.search_trials} trials)",
            "hours": settings.retrain_hours,
            "margin": settings.retrain_margin,
            "trials": settings.search_trials,
        },
        "concurrency_limit": ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        "description": "Search the configuration again, gate the choice like any candidate, promote if it wins.",
    }


def deployment(settings: Settings):
    """The retrain deployment, to serve from this process (`serve_retrain`)."""
    from flows.retrain import retrain

    return retrain.to_deployment(**deployment_options(settings))


def deployments(settings: Settings) -> list:
    """Every deployment `flows serve` serves: the retrain, and the search when it is on."""
    from flows.retrain import retrain

    search = search_options(settings)
    return [deployment(settings)] + ([retrain.to_deployment(**search)] if search else [])


def deploy_to_pool(settings: Settings, pool: str, source: Path) -> str:
    """Register the retrain deployment on a process work pool (created if missing), its code read
    from `source` by the pool's workers (docker-compose: the image's /app). Returns its id."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        except ObjectAlreadyExists:
            pass
    retrain = flow.from_source(source=str(source), entrypoint="flows/retrain.py:retrain")
    search = search_options(settings)
    if search:
        retrain.deploy(work_pool_name=pool, print_next_steps=False, **search)
    return str(retrain.deploy(work_pool_name=pool, print_next_steps=False, **deployment_options(settings)))


def serve_retrain(settings: Settings) -> None:
    """Serve the deployments until interrupted (Prefect pauses their schedules on shutdown)."""
    from prefect import serve

    serve(*deployments(settings))


def served_deployment_id(settings: Settings) -> str | None:
    """The retrain deployment's id when a runner serves it now (it polled the API lately), else None:
    a run of an unserved deployment would wait for nobody."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_url}):
        with get_client(sync_client=True) as client:
            try:
                found = client.read_deployment_by_name(f"retrain/{DEPLOYMENT}")
            except Exception:  # ObjectNotFound, or a server that answers the port but not the API
                return None
    status = getattr(found.status, "value", found.status)
    return str(found.id) if status == "READY" else None


def start_run(settings: Settings, parameters: dict, wait: bool) -> tuple[str, str]:
    """Start a run of the served deployment (`sensorcast retrain`); with `wait`, until it ends.
    Returns (flow run id, final state name or "SCHEDULED")."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_url}):
        run = run_deployment(
            f"retrain/{DEPLOYMENT}", parameters=parameters, timeout=None if wait else 0, poll_interval=2
        )
    state = run.state.type.value if run.state else "SCHEDULED"
    return str(run.id), state
