"""The loop in its second month, on the real stack: a search on day 1, then a scheduled retrain every
day through the deployment, messy readings throughout, the services SIGKILLed, a level shift, MLflow
down across a promotion, a horizon change and junk on every internal topic; one service per Kafka
client beside each other (pipeline/tools/bench/lifecycle.py drives it, as `sensorcast bench lifecycle`
does)."""

from __future__ import annotations

import pytest

from pipeline.tools.bench.lifecycle import run_lifecycle
from pipeline.tools.bench.month import Plan, print_report

pytestmark = [
    pytest.mark.integration,
    pytest.mark.lifecycle,
    pytest.mark.timeout(3600),
]  # 8 min on 2 cores here, past 30 on one: the ceiling only stops a hung month

# the month compressed to four days (each day's retrain is a deployment run, a process of its own: one
# to two minutes here): the search on day 1; on day 2 the services are SIGKILLed midway, the weather
# shifts and MLflow is down for 30 s from the moment the scheduled run registers its version (again
# the next day while that run's version is not promoted); on day 3 the horizon changes; day 4 retrains
# after it. `sensorcast bench lifecycle` (`make lifecycle`) runs the whole month, Plan().
PLAN = Plan(
    days=4,
    search_trials=2,
    history_days=21,
    train_days=14,
    epochs=2,
    kill_day=2,
    shift_day=2,
    outage_day=2,
    horizon_day=3,
)


def test_a_month_of_operation_loses_nothing_carries_the_champion_and_keeps_its_intervals(local_settings) -> None:
    lines: list[str] = []
    report = run_lifecycle(local_settings(), PLAN, log=lines.append)
    print_report(report, log=lines.append)
    print("\n".join(lines))  # the month's report, in the test's output
    retrains = report["retrains"]
    assert len(retrains) == PLAN.days and retrains[0]["kind"] == "search" and retrains[0]["promoted"]
    # no process died unasked, and each stopped cleanly when asked
    assert report["process_exits"] == {} and set(report["exit_codes"].values()) == {0}, report["exit_codes"]
    # every retrain ran to its end and either promoted or said why not; so did any the monitor's drift started
    assert all(r["state"] == "COMPLETED" and (r["promoted"] or r["gate"]) for r in retrains), retrains
    # (one the month's end found still queued behind the others is neither)
    assert not [r for r in report["other_runs"] if r["state"] in ("FAILED", "CRASHED")], report["other_runs"]
    # after day 1 each retrain trains the champion's own configuration, warm-started from its weights;
    # the horizon change is a new lineage: searched, from scratch, gated against the naive baselines only
    champion, horizon = retrains[0]["version"], PLAN.horizon
    for r in retrains[1:]:
        if r["horizon"] == horizon:
            assert r["config_source"] == f"champion v{champion}" and r["warm_started"], r
        else:  # a new lineage searches its configuration (the preset lost to persistence at 24 steps here)
            assert r["config_source"] == "search" and not r["warm_started"], r
            assert "naive baselines only" in r["gate"] and f"forecasts {horizon} steps" in r["gate"], r
        if r["promoted"]:
            champion, horizon = r["version"], r["horizon"]
            # each client's service served the new champion (the driver waits for it, up to a hang guard)
            assert set(r["served_after_s"]) == set(PLAN.clients), r
    assert any(r["horizon"] == PLAN.new_horizon for r in retrains)  # the change reached the retrains
    # MLflow was down for 30 s from the moment a scheduled run registered its version; the run completed
    outage = report["outage"]
    assert outage["down_s"] >= PLAN.outage_s and outage["version"], outage
    # every reading became a forecast or a dead letter with its reason, on each client
    for client in PLAN.clients:
        dead = report["dead_letters"][client]
        assert sum(dead.values()) == report["refusals_expected"], (client, dead)
        warming = 3 * PLAN.sites * (PLAN.lookback - 1)  # the first readings of a site fill its window
        assert report["missing"][client] <= warming, (client, report["missing"])
    # the monitor scored and adapted every champion's intervals, on every channel (a monitor whose settings
    # took the version's level for junk scored none); both clients' services applied its multipliers from
    # one calibration topic, each from its next batch: the same coverage within 2 points. It is not yet the
    # level's: about 81% for the 90% intervals in this four-day month (see the note on #36)
    champions = {f"v{r['version']}" for r in retrains if r["promoted"]}
    assert set(report["monitor_coverage"]) == champions, report["monitor_coverage"]
    assert all(len(c) == 7 for c in report["monitor_coverage"].values()), report["monitor_coverage"]
    first, second = (report["coverage_by_week"][c]["last week"] for c in PLAN.clients)
    assert abs(first - second) <= 0.02, report["coverage_by_week"]
