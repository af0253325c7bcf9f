"""Target selection: healthy targets only, fail open when none is, flow hash and round robin."""

from collections import Counter

import pytest

from infra.sandbox.config import Target
from infra.sandbox.routing import TargetSelector, UnknownAlgorithmError

pytestmark = pytest.mark.unit

GROUP = "arn:group"
TARGETS = (Target("127.0.0.1", 1001), Target("127.0.0.1", 1002), Target("127.0.0.1", 1003))


def _selector(healthy: set, algorithm: str = "flow_hash") -> TargetSelector:
    return TargetSelector(lambda group, target: target.port in healthy, algorithm)


def _flows(count: int):
    return [(("127.0.0.1", 40000 + n), ("127.0.0.1", 443)) for n in range(count)]


def test_only_healthy_targets_get_connections():
    selector = _selector({1001, 1003})
    chosen = Counter(selector.choose(GROUP, TARGETS, flow).port for flow in _flows(300))
    assert set(chosen) == {1001, 1003}, f"expected only the healthy 1001 and 1003, got {chosen}"


def test_no_healthy_target_fails_open_to_all():
    selector = _selector(set())
    chosen = Counter(selector.choose(GROUP, TARGETS, flow).port for flow in _flows(300))
    assert set(chosen) == {1001, 1002, 1003}, f"expected every registered target, got {chosen}"


def test_no_registered_target_gives_none():
    assert _selector({1001}).choose(GROUP, (), _flows(1)[0]) is None


def test_flow_hash_keeps_a_flow_on_one_target_and_spreads_flows():
    selector = _selector({1001, 1002, 1003})
    flow = _flows(1)[0]
    assert len({selector.choose(GROUP, TARGETS, flow) for _ in range(20)}) == 1
    chosen = Counter(selector.choose(GROUP, TARGETS, flow).port for flow in _flows(600))
    assert min(chosen.values()) > 120, f"expected roughly 200 flows per target, got {chosen}"


def test_round_robin_cycles_through_healthy_targets():
    selector = _selector({1001, 1002}, "round_robin")
    chosen = [selector.choose(GROUP, TARGETS).port for _ in range(4)]
    assert chosen == [1001, 1002, 1001, 1002], f"expected alternation, got {chosen}"


def test_unknown_algorithm_is_refused_with_the_accepted_ones():
    with pytest.raises(UnknownAlgorithmError, match="flow_hash, round_robin"):
        _selector(set(), "least_outstanding")
