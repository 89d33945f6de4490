import pytest

from pipeline.kafka.roles import ROLES, grants, username
from pipeline.settings import Settings


def test_each_topic_has_exactly_one_writer_and_it_is_the_component_that_owns_it() -> None:
    s = Settings()
    writers = {(g.name, g.role) for g in grants(s) if g.operation == "write" and g.resource == "topic"}
    assert writers == {
        (s.readings_topic, "producer"),
        (s.forecasts_topic, "service"),
        (s.dlq_topic, "service"),
        (s.models_topic, "retrain"),
        (s.calibration_topic, "monitor"),
        (s.windows_topic, "service"),
    }


def test_only_the_service_has_a_consumer_group_and_the_api_only_reads_forecasts() -> None:
    s = Settings(consumer_group="site-7-forecaster")
    assert [(g.role, g.name) for g in grants(s) if g.resource == "group"] == [("service", "site-7-forecaster")]
    assert [(g.name, g.operation) for g in grants(s, "api")] == [(s.forecasts_topic, "read")]
    assert {g.role for g in grants(s)} == set(ROLES)


def test_an_unknown_role_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no such role 'admin'"):
        grants(Settings(), "admin")
    assert username("producer") == "sensorcast-producer"


def test_only_the_service_may_write_transactions_and_only_under_its_group_s_prefix() -> None:
    from pipeline.kafka.sink import transactional_id

    s = Settings(consumer_group="site-7-forecaster")
    [grant] = [g for g in grants(s) if g.resource == "transactional_id"]
    assert (grant.role, grant.operation, grant.prefixed) == ("service", "write", True)
    assert transactional_id(s).startswith(grant.name)  # kafka-python's; confluent's is sensorcast-<group>-<random>
