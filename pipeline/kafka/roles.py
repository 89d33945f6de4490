"""Who may do what on a secured broker: one Kafka principal per component, each with only the rights
its work needs; the broker denies whatever no grant allows. A forged calibration, model announcement
or forecast is then refused by the broker, not trusted by its reader.

| role | readings | forecasts | dead letters | models | calibration | windows' changelog | consumer group |
| --- | --- | --- | --- | --- | --- | --- | --- |
| producer | write | – | – | – | – | – | – |
| service | read | write | write | read | read | read, write | its own |
| monitor | read | read | – | read | read, write | – | – |
| retrain | read | – | – | write | – | – | – |
| api | – | read | – | – | – | – | – |

Under exactly-once the service also writes transactions, with ids that start `sensorcast-<its
group>-` (one prefixed grant: both clients name their transactional ids so), and no other role may.
The monitor reads the calibration topic to resume its own multipliers after a restart; it, the
retrain flow and the api read without a group (they assign partitions), so only the service has one.
Topics are the admin's to create (`stack up`). Pure: `pipeline.tools.principals` creates the logins
and the ACLs.

>>> from pipeline.settings import Settings
>>> [(g.resource, g.name, g.operation) for g in grants(Settings(), "retrain")]
[('topic', 'sensors.readings', 'read'), ('topic', 'sensorcast.models', 'write')]
>>> username("api")
'sensorcast-api'
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.kafka.sink import transactional_id_prefix
from pipeline.settings import Settings

ROLES = ("producer", "service", "monitor", "retrain", "api")


@dataclass(frozen=True)
class Grant:
    role: str
    resource: str  # topic, group, transactional_id
    name: str
    operation: str  # read, write (each implies describe)
    prefixed: bool = False  # `name` is a prefix: every resource whose name starts so


def username(role: str) -> str:
    """The SCRAM login of a component's principal (User:<username>)."""
    if role not in ROLES:
        raise ValueError(f"no such role {role!r}: one of {', '.join(ROLES)}")
    return f"sensorcast-{role}"


def grants(settings: Settings, role: str | None = None) -> list[Grant]:
    """Every right the table above gives (one role's, with `role`), in the settings' topic names."""
    s = settings
    table = {
        "producer": [("topic", s.readings_topic, "write")],
        "service": [
            ("topic", s.readings_topic, "read"),
            ("topic", s.forecasts_topic, "write"),
            ("topic", s.dlq_topic, "write"),
            ("topic", s.models_topic, "read"),
            ("topic", s.calibration_topic, "read"),
            ("topic", s.windows_topic, "read"),
            ("topic", s.windows_topic, "write"),
            ("group", s.consumer_group, "read"),
            ("transactional_id", transactional_id_prefix(s), "write", True),
        ],
        "monitor": [
            ("topic", s.readings_topic, "read"),
            ("topic", s.forecasts_topic, "read"),
            ("topic", s.models_topic, "read"),
            ("topic", s.calibration_topic, "read"),
            ("topic", s.calibration_topic, "write"),
        ],
        "retrain": [("topic", s.readings_topic, "read"), ("topic", s.models_topic, "write")],
        "api": [("topic", s.forecasts_topic, "read")],
    }
    if role is not None:
        username(role)  # a clear error for an unknown role
    return [Grant(r, *g) for r, rows in table.items() if role in (None, r) for g in rows]
