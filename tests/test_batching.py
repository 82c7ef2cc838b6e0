import pytest

from labs_lib import batching


def test_schedules_by_hand():
    out = [5, 1, 2, 2, 1]
    # static, batches of 2: [5, 1] -> 2, 1, 1, 1, 1; [2, 2] -> 2, 2; [1] -> 1
    assert batching.static_schedule(out, 2) == [2, 1, 1, 1, 1, 2, 2, 1]
    # continuous, 2 slots: r0+r1 | r0+r2 | r0+r2 | r0+r3 | r0+r3 | r4
    assert batching.continuous_schedule(out, 2) == [2, 2, 2, 2, 2, 1]
    # 11 useful tokens in 2 x (5 + 2 + 1) = 16 slot-steps
    assert batching.idle_fraction(out, 2) == pytest.approx(5 / 16)


def test_every_token_is_produced_once():
    out = [7, 3, 9, 1, 4, 4, 2, 8, 5]
    for b in (1, 2, 4, 16):
        assert sum(batching.static_schedule(out, b)) == sum(out)
        assert sum(batching.continuous_schedule(out, b)) == sum(out)
        assert len(batching.continuous_schedule(out, b)) <= len(batching.static_schedule(out, b))


def test_equal_lengths_leave_no_idle_slot():
    out = [4] * 6
    assert batching.idle_fraction(out, 3) == 0
    assert batching.static_schedule(out, 3) == batching.continuous_schedule(out, 3) == [3] * 8


def test_batch_one_is_serial():
    out = [3, 2]
    assert batching.static_schedule(out, 1) == batching.continuous_schedule(out, 1) == [1] * 5


def test_prices_and_step_cost_line():
    assert batching.predict_seconds([3, 3, 1], fixed=0.01, per_seq=0.002) == pytest.approx(0.044)
    fixed, per_seq = batching.step_cost(0.012, 1, 0.026, 8)
    assert (fixed, per_seq) == pytest.approx((0.010, 0.002))
    assert batching.step_cost(0.02, 1, 0.019, 8) == (0.02, 0.0)  # noise never makes a step cheaper with more sequences


@pytest.mark.parametrize("call, match", [
    (lambda: batching.static_schedule([], 2), "non-empty"),
    (lambda: batching.continuous_schedule([3, 0], 2), "positive token counts"),
    (lambda: batching.idle_fraction([3], 0), "batch"),
    (lambda: batching.step_cost(0.01, 8, 0.02, 8), "must exceed"),
])
def test_bad_inputs_name_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()
