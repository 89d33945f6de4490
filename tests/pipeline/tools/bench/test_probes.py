import pytest

from pipeline.tools.bench.probes import served_version, wait_until
from pipeline.tools.stack import free_ports


def test_wait_until_returns_once_the_check_holds() -> None:
    answers = iter([False, False, True])
    assert wait_until(lambda: next(answers), ceiling_s=60, what="the third look", poll_s=0) >= 0


def test_wait_until_names_what_hung_past_its_ceiling() -> None:
    with pytest.raises(TimeoutError, match="the service commits: not after 0 s"):
        wait_until(lambda: False, ceiling_s=0, what="the service commits", poll_s=0)


def test_a_service_that_does_not_answer_serves_no_version() -> None:
    (port,) = free_ports(1)
    assert served_version(port) is None
