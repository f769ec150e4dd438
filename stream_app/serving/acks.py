"""Acknowledge consumed messages to Faust in offset order, per partition.

The pipeline settles messages out of order (sessions are scored in whatever order they
become ready), but Faust turns acknowledgements into commits by looking for runs of
consecutive acked offsets, and until a partition's first commit (after every start and every
rebalance) it trusts the first run it sees even when lower offsets are still in flight. Left
alone, that commits past events whose score was never published. ``OrderedAcks`` holds a
settled message back until every lower offset of its partition that this process consumed is
settled too, so an offset Faust commits always means "this and everything before it is done".

A re-delivered offset (the consumer seeked back after a rebalance) starts the partition over:
what was in flight before the seek will be consumed again, so its late settles are ignored.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

H = TypeVar("H")


@dataclass(slots=True)
class _Slot(Generic[H]):
    handle: H
    settled: bool = False


class OrderedAcks(Generic[H]):
    """Per partition: register each consumed message, settle it, get back what may be acked."""

    def __init__(self) -> None:
        # partition -> offset -> slot, in consumption (= offset) order; an OrderedDict so that
        # popping from the front stays O(1) with many messages in flight.
        self._slots: dict[Hashable, OrderedDict[int, _Slot[H]]] = {}

    def __len__(self) -> int:
        return sum(len(slots) for slots in self._slots.values())

    def register(self, partition: Hashable, offset: int, handle: H) -> None:
        slots = self._slots.setdefault(partition, OrderedDict())
        if slots and offset <= next(reversed(slots)):
            slots.clear()  # the consumer went back: everything from here comes again
        slots[offset] = _Slot(handle)

    def forget(self, partitions: Iterable[Hashable]) -> None:
        """Drop revoked partitions: their unsettled messages are consumed again elsewhere."""
        for partition in partitions:
            self._slots.pop(partition, None)

    def settle(self, partition: Hashable, offset: int, handle: H) -> list[H]:
        """Mark one message done; return the handles now safe to ack, lowest offset first."""
        slots = self._slots.get(partition)
        slot = slots.get(offset) if slots else None
        if slots is None or slot is None or slot.handle is not handle:
            return []  # from before a rewind: it will be consumed and settled again
        slot.settled = True
        ready: list[H] = []
        while slots and next(iter(slots.values())).settled:
            ready.append(slots.popitem(last=False)[1].handle)
        return ready
