"""The deadline-aware batch policy and its online cost model, with a fake clock and a fake
model time (no pipeline, no threads)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.serving.deadline import (
    RELEASE_REASONS,
    BatchPolicy,
    BatchShape,
    CostModel,
    Decision,
    Waiting,
)


def model_ms(shape: BatchShape, a: float = 4.0, b: float = 6.0, c: float = 0.1) -> float:
    """The fake model's true time per batch."""
    return a + b * shape.sessions + c * shape.sessions * shape.padded_len


def trained(cost: CostModel, batches: int = 60, seed: int = 1, **truth: float) -> CostModel:
    rng = random.Random(seed)
    for _ in range(batches):
        shape = BatchShape(rng.randint(1, 64), rng.randint(1, 50))
        cost.observe(shape, model_ms(shape, **truth) * rng.uniform(0.97, 1.03))
    return cost


def queue(*arrivals_ms: int, length: int = 3) -> list[Waiting]:
    return [Waiting(arrived_ms=t, length=length) for t in arrivals_ms]


# ------------------------------------------------------------------------------ cost model


def test_the_fit_recovers_the_fake_models_cost() -> None:
    cost = trained(CostModel())
    for shape in (BatchShape(1, 3), BatchShape(16, 10), BatchShape(64, 50)):
        assert cost.fitted_ms(shape) == pytest.approx(model_ms(shape), rel=0.08, abs=2.0)
    assert 1.0 <= cost.margin <= 1.1


def test_before_any_batch_the_prior_decides() -> None:
    cost = CostModel(prior_ms=(5.0, 10.0, 0.0))
    assert cost.estimate_ms(BatchShape(8, 20)) == pytest.approx(85.0)


def test_a_noisy_neighbour_does_not_wreck_the_fit() -> None:
    """One batch in ten takes 10x as long (another job took the cores): the fit of the
    normal cost stays close, and the safety factor stays bounded."""
    cost, rng = CostModel(), random.Random(7)
    for i in range(64):
        shape = BatchShape(rng.randint(1, 64), rng.randint(1, 50))
        slow = 10.0 if i % 10 == 3 else 1.0
        cost.observe(shape, model_ms(shape) * slow)
    shape = BatchShape(32, 20)
    assert cost.fitted_ms(shape) == pytest.approx(model_ms(shape), rel=0.15)
    assert cost.margin <= 3.0


def test_the_estimate_follows_a_lasting_slowdown() -> None:
    cost = trained(CostModel())
    shape = BatchShape(32, 20)
    before = cost.estimate_ms(shape)
    trained(cost, batches=60, seed=2, a=8.0, b=12.0, c=0.2)  # the machine got 2x slower
    assert cost.estimate_ms(shape) == pytest.approx(2 * before, rel=0.15)


def test_impossible_timings_are_ignored() -> None:
    cost = trained(CostModel())
    coef = cost.coef.copy()
    cost.observe(BatchShape(4, 3), float("nan"))
    cost.observe(BatchShape(4, 3), -1.0)
    cost.observe(BatchShape(0, 0), 5.0)
    assert (cost.coef == coef).all()


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 128), st.integers(0, 60), st.floats(0.0, 5_000.0)),
        min_size=1,
        max_size=80,
    )
)
def test_estimates_stay_positive_and_grow_with_the_batch(
    observations: list[tuple[int, int, float]],
) -> None:
    cost = CostModel()
    for sessions, padded, elapsed in observations:
        cost.observe(BatchShape(sessions, padded), elapsed)
    small, large = cost.estimate_ms(BatchShape(1, 5)), cost.estimate_ms(BatchShape(64, 5))
    assert 0 < small <= large
    assert 1.0 <= cost.margin <= 3.0


# ------------------------------------------------------------------------------ policy


def policy(budget_ms: float = 100.0, max_batch: int = 64) -> BatchPolicy:
    return BatchPolicy(budget_ms, max_batch, cost=trained(CostModel()))


def test_nothing_waiting_nothing_released() -> None:
    assert policy().decide(1_000, [], 0).size == 0


def test_budget_zero_is_the_old_policy_everything_at_once() -> None:
    old = BatchPolicy(0, max_batch=64)
    assert old.decide(1_000, queue(1_000, 1_000), 2) == Decision(2, "idle")
    many = queue(*[1_000] * 64)
    assert old.decide(1_000, many, 500) == Decision(64, "size")


def test_a_full_batch_waiting_is_released_at_the_throughput_size() -> None:
    assert policy(max_batch=8).decide(1_000, queue(*[999] * 8), 40) == Decision(8, "size")


def test_quiet_traffic_is_scored_at_once() -> None:
    """One session every second: no batch to wait for, the model would only sit idle."""
    p = policy()
    p.arrived(0, 1)
    p.arrived(1_000, 1)
    assert p.decide(1_000, queue(1_000), 1) == Decision(1, "idle")


def test_a_batch_never_exceeds_what_the_oldest_events_budget_allows() -> None:
    """40 sessions wait; at ~6 ms each only about 14 fit into what is left of 100 ms."""
    p = policy(budget_ms=100)
    head = queue(*[1_000] * 40)
    decision = p.decide(1_010, head, 40)
    assert decision.reason == "deadline"
    assert 0 < decision.size < 40
    assert p.cost.estimate_ms(BatchShape(decision.size, 3)) <= 90
    assert p.cost.estimate_ms(BatchShape(decision.size + 1, 3)) > 90


def test_a_late_queue_is_drained_with_the_biggest_batch_at_hand() -> None:
    p = policy(budget_ms=100)
    decision = p.decide(5_000, queue(*[1_000] * 30), 30)
    assert decision == Decision(30, "deadline")


def test_a_cut_batch_never_falls_below_what_keeps_up_with_arrivals() -> None:
    """A model with a large per-call cost (40 ms + 1 ms per session) and 200 new sessions per
    second: calls of a few sessions could not keep up (the queue would only grow), so the
    budget cuts the batch no lower than rate * a / (0.8 - rate * b), about 13 sessions."""
    cost = trained(CostModel(), a=40.0, b=1.0, c=0.0)
    p = BatchPolicy(100, max_batch=64, cost=cost)
    for t in range(0, 1_000, 5):
        p.arrived(t, 1)
    decision = p.decide(1_000, queue(*[950] * 40), 40)
    assert decision.reason == "deadline"
    assert p.cost.estimate_ms(BatchShape(decision.size, 3)) > 50  # more than fits
    assert 12 <= decision.size < 40
    quiet = BatchPolicy(100, max_batch=64, cost=cost)  # same queue, no recent arrivals
    assert quiet.decide(1_000, queue(*[950] * 40), 40).size < 12


@settings(max_examples=200, deadline=None)
@given(
    budget=st.floats(0, 2_000),
    max_batch=st.integers(1, 128),
    ages=st.lists(st.integers(0, 3_000), min_size=1, max_size=150),
    rate=st.integers(0, 50),
    truth=st.tuples(st.floats(0, 50), st.floats(0.1, 30), st.floats(0, 1)),
)
def test_every_decision_is_sane(
    budget: float,
    max_batch: int,
    ages: list[int],
    rate: int,
    truth: tuple[float, float, float],
) -> None:
    a, b, c = truth
    p = BatchPolicy(budget, max_batch, cost=trained(CostModel(), batches=20, a=a, b=b, c=c))
    now = 10_000
    for t in range(now - 1_000, now, 100):
        p.arrived(t, rate)
    head = queue(*sorted(now - age for age in ages))
    decision = p.decide(now, head[:max_batch], len(head))
    assert 1 <= decision.size <= min(max_batch, len(head))  # never idle while sessions wait
    assert decision.reason in RELEASE_REASONS
    if len(head) >= max_batch:
        assert decision.size == max_batch


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BatchPolicy(100, 0)
    with pytest.raises(ValueError, match="budget"):
        BatchPolicy(-1, 8)
