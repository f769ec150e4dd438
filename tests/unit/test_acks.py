"""Acks reach Faust in offset order per partition, whatever order the pipeline settles in."""

from __future__ import annotations

from stream_app.serving.acks import OrderedAcks

P0 = ("events", 0)
P1 = ("events", 1)


def _registered(
    offsets: range, partition: tuple[str, int] = P0
) -> tuple[OrderedAcks[str], dict[int, str]]:
    acks: OrderedAcks[str] = OrderedAcks()
    handles = {offset: f"{partition[1]}@{offset}" for offset in offsets}
    for offset, handle in handles.items():
        acks.register(partition, offset, handle)
    return acks, handles


def test_a_settled_message_waits_for_every_lower_offset() -> None:
    acks, h = _registered(range(10, 14))
    assert acks.settle(P0, 12, h[12]) == []
    assert acks.settle(P0, 11, h[11]) == []
    assert acks.settle(P0, 10, h[10]) == [h[10], h[11], h[12]]
    assert acks.settle(P0, 13, h[13]) == [h[13]]
    assert len(acks) == 0


def test_partitions_do_not_wait_for_each_other() -> None:
    acks, h0 = _registered(range(3))
    acks.register(P1, 7, "1@7")
    assert acks.settle(P1, 7, "1@7") == ["1@7"]
    assert acks.settle(P0, 1, h0[1]) == []
    assert len(acks) == 3  # P0's three wait for offset 0; P1 is done


def test_offset_gaps_do_not_block() -> None:
    acks: OrderedAcks[str] = OrderedAcks()
    handles = {offset: f"0@{offset}" for offset in (5, 9, 20)}  # compaction leaves holes
    for offset, handle in handles.items():
        acks.register(P0, offset, handle)
    assert acks.settle(P0, 9, handles[9]) == []
    assert acks.settle(P0, 5, handles[5]) == [handles[5], handles[9]]


def test_a_rewind_drops_what_was_in_flight_and_ignores_its_late_settles() -> None:
    acks, old = _registered(range(100, 104))
    assert acks.settle(P0, 100, old[100]) == [old[100]]
    # Rebalance: the consumer seeks back to the committed offset (101) and re-delivers.
    acks.register(P0, 101, "again@101")
    acks.register(P0, 102, "again@102")
    assert acks.settle(P0, 102, old[102]) == []  # the old delivery's late settle
    assert acks.settle(P0, 101, old[101]) == []
    assert acks.settle(P0, 101, "again@101") == ["again@101"]
    assert acks.settle(P0, 102, "again@102") == ["again@102"]
    assert len(acks) == 0


def test_settling_twice_or_unknown_messages_releases_nothing() -> None:
    acks, h = _registered(range(2))
    assert acks.settle(P0, 0, h[0]) == [h[0]]
    assert acks.settle(P0, 0, h[0]) == []
    assert acks.settle(P1, 0, "never registered") == []
    assert acks.settle(P0, 1, h[1]) == [h[1]]
