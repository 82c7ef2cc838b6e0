"""experiments.counters_delta: the change of the spec-decode counters over one phase."""

from labs_lib import experiments


def test_counters_delta_subtracts_scalars_and_positions_and_keeps_missing_as_none():
    before = {"num_drafts": 3, "accepted_per_pos": [2, 1], "steps": 10, "generated": None}
    after = {"num_drafts": 9, "accepted_per_pos": [7, 4], "steps": 25, "generated": 40}
    assert experiments.counters_delta(before, after) == {"num_drafts": 6, "accepted_per_pos": [5, 3],
                                                         "steps": 15, "generated": None}


def test_counters_delta_from_a_fresh_engine_counts_from_zero():
    assert experiments.counters_delta({"accepted_per_pos": None}, {"accepted_per_pos": [4, 2]}) == {
        "accepted_per_pos": [4, 2]}
