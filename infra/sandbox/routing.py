"""Which target a new connection goes to: a healthy one by flow hash or round robin, else any."""

import hashlib
import itertools
from typing import Callable, Optional, Sequence

from .config import Target

__all__ = ["ALGORITHMS", "TargetSelector", "UnknownAlgorithmError"]

FLOW_HASH = "flow_hash"
ROUND_ROBIN = "round_robin"
ALGORITHMS = (FLOW_HASH, ROUND_ROBIN)


class UnknownAlgorithmError(ValueError):
    """A target selection algorithm other than flow_hash or round_robin."""


def _flow_index(flow: tuple, count: int) -> int:
    # The NLB hashes protocol, source and destination address and port, and TCP sequence
    # number; a connection's 4-tuple is what stays fixed for its lifetime here.
    digest = hashlib.blake2b(repr(flow).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


class TargetSelector:
    """Chooses a target among a target group's registered targets.

    Only healthy targets get new connections. When none is healthy the NLB fails open and
    sends to all registered targets; so does this. `is_healthy(group_arn, target)` says
    whether a target passed its checks.
    """

    def __init__(self, is_healthy: Callable[[str, Target], bool],
                 algorithm: str = FLOW_HASH) -> None:
        if algorithm not in ALGORITHMS:
            raise UnknownAlgorithmError(
                f"unknown target selection {algorithm!r}; accepted: {', '.join(ALGORITHMS)}"
            )
        self._is_healthy = is_healthy
        self._algorithm = algorithm
        self._counters: dict[str, itertools.count] = {}

    def candidates(self, group_arn: str, targets: Sequence[Target]) -> tuple[Target, ...]:
        """The targets new connections may go to: the healthy ones, or all when none is."""
        healthy = tuple(target for target in targets if self._is_healthy(group_arn, target))
        return healthy or tuple(targets)

    def choose(self, group_arn: str, targets: Sequence[Target],
               flow: tuple = ()) -> Optional[Target]:
        """The target for a connection with 4-tuple `flow`; None when none is registered."""
        candidates = self.candidates(group_arn, targets)
        if not candidates:
            return None
        if self._algorithm == FLOW_HASH:
            return candidates[_flow_index(flow, len(candidates))]
        counter = self._counters.setdefault(group_arn, itertools.count())
        return candidates[next(counter) % len(candidates)]
