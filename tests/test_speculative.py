"""Lab 10's speculative-decoding model: hand-worked cases, identities across functions, errors."""

import math
import random
import re

import pytest

from labs_lib import speculative as spec
from labs_lib.client import RequestResult

# ---- tokens per step ----------------------------------------------------------------------------


def test_tokens_per_step_multiplies_along_the_accepted_prefix():
    assert spec.expected_tokens_per_step([0.8, 0.6]) == pytest.approx(1 + 0.8 + 0.8 * 0.6)  # 2.28
    # position 2's rate only matters once position 1 is accepted: 1 + 0.5 + 0.5 x 0.9 + 0.5 x 0.9 x 0.2
    assert spec.expected_tokens_per_step([0.5, 0.9, 0.2]) == pytest.approx(2.04)
    assert spec.expected_tokens_per_step([0.0, 1.0, 1.0]) == 1.0  # first rejected: the target's token only
    assert spec.expected_tokens_per_step([1.0] * 5) == 6.0  # all accepted: k drafts + the bonus token


def test_uniform_closed_form_matches_equal_per_position_rates():
    assert spec.expected_tokens_uniform(0.5, 3) == pytest.approx(1.875)  # (1 - 0.5^4) / 0.5
    assert spec.expected_tokens_uniform(0.7, 4) == pytest.approx(spec.expected_tokens_per_step([0.7] * 4))
    assert spec.expected_tokens_uniform(0.7, 4) == pytest.approx(2.7731)  # 1 + .7 + .49 + .343 + .2401
    assert spec.expected_tokens_uniform(1.0, 7) == 8.0  # the 0/0 of the closed form at alpha = 1


@pytest.mark.parametrize("alpha,k", [(0.0, 1), (0.3, 2), (0.5, 3), (0.75, 5), (0.999, 4), (1.0, 6)])
def test_alpha_for_length_inverts_the_uniform_form(alpha, k):
    length = spec.expected_tokens_uniform(alpha, k)
    assert spec.alpha_for_length(length, k) == pytest.approx(alpha, abs=1e-8)


def test_alpha_for_length_hand_case_and_range():
    # k = 1: a step emits 1 + alpha tokens, so length 1.6 is alpha 0.6; k = 2: 1 + a + a^2 = 1.5
    assert spec.alpha_for_length(1.6, 1) == pytest.approx(0.6)
    assert spec.alpha_for_length(1.5, 2) == pytest.approx((math.sqrt(3) - 1) / 2)
    with pytest.raises(ValueError, match=r"length must be in \[1, k \+ 1\] = \[1, 4\] for k=3"):
        spec.alpha_for_length(4.5, 3)
    with pytest.raises(ValueError, match="length"):
        spec.alpha_for_length(0.9, 3)


def test_uniform_rate_of_a_synthetic_length():
    # vLLM's synthetic_acceptance_length 3.25 at k = 4 as one uniform rate: 1 + a + a^2 + a^3 + a^4 = 3.25
    alpha = spec.alpha_for_length(3.25, 4)
    assert alpha == pytest.approx(0.7827, abs=1e-4)
    assert spec.expected_tokens_uniform(alpha, 4) == pytest.approx(3.25)


def test_rates_must_be_fractions():
    with pytest.raises(ValueError, match=r"rates\[1\] must be a probability in \[0, 1\], got 60.*0.8, not 80"):
        spec.expected_tokens_per_step([0.8, 60])
    with pytest.raises(ValueError, match="alpha"):
        spec.expected_tokens_uniform(1.2, 3)
    with pytest.raises(ValueError, match="one rate per draft position"):
        spec.expected_tokens_per_step([])
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        spec.expected_tokens_uniform(0.5, 0)


# ---- vLLM's counters ----------------------------------------------------------------------------


def test_counters_to_rates_hand_case():
    # 50 drafts of k = 3: 40 got draft 1 accepted, 30 of those draft 2, 10 of those draft 3
    r = spec.rates_from_counters(50, [40, 30, 10])
    assert r["unconditional"] == pytest.approx([0.8, 0.6, 0.2])
    assert r["conditional"] == pytest.approx([0.8, 0.75, 1 / 3])
    assert r["num_accepted"] == 80 and r["acceptance_length"] == pytest.approx(2.6)  # 1 + 80 / 50
    # the same number three ways: the product formula over conditional rates telescopes to 1 + sum(u)
    assert spec.expected_tokens_per_step(r["conditional"]) == pytest.approx(1 + sum(r["unconditional"]))
    assert spec.acceptance_length(50, 80) == pytest.approx(r["acceptance_length"])
    # binomial error of position 3's rate: 10 of the 30 drafts that reached it
    assert r["conditional_stderr"][2] == pytest.approx(math.sqrt((1 / 3) * (2 / 3) / 30))


def test_counters_by_position_label_sort_as_numbers():
    counts = [100 - 9 * i for i in range(11)]  # k = 11: labels "0".."10"
    labels = {str(i): c for i, c in enumerate(counts)}
    shuffled = dict(sorted(labels.items()))  # string order: "0", "1", "10", "2", ...
    assert list(shuffled)[2] == "10"
    assert spec.rates_from_counters(120.0, shuffled) == spec.rates_from_counters(120, counts)


def test_counters_that_rise_with_position_are_rejected():
    # position 2 above position 1: a string-sorted label list, or counters from different scrapes
    with pytest.raises(ValueError, match=r"accepted_per_pos\[1\] = 50 exceeds accepted_per_pos\[0\] = 40.*int\(label\)"):
        spec.rates_from_counters(100, [40, 50])
    with pytest.raises(ValueError, match=r"accepted_per_pos\[0\] = 101 exceeds num_drafts = 100"):
        spec.rates_from_counters(100, [101])
    with pytest.raises(ValueError, match="positions 0..k-1 with none missing"):
        spec.rates_from_counters(100, {"0": 40, "2": 10})


def test_counters_errors_name_the_input():
    with pytest.raises(ValueError, match="num_drafts is 0.*speculative decoding enabled"):
        spec.rates_from_counters(0, [0, 0])
    with pytest.raises(ValueError, match="num_drafts is 0"):
        spec.acceptance_length(0, 0)
    with pytest.raises(ValueError, match=r"accepted_per_pos\[1\] must be a whole count.*not a rate"):
        spec.rates_from_counters(100, [40, 2.5])
    with pytest.raises(ValueError, match="num_accepted must be a whole count"):
        spec.acceptance_length(10, -1)


def test_short_drafts_are_flagged():
    # ngram: 100 drafts of k = 3 but only 250 draft tokens, so some drafts were shorter than 3
    r = spec.rates_from_counters(100, [70, 40, 20], num_draft_tokens=250)
    assert r["full_drafts"] is False and r["draft_acceptance_rate"] == pytest.approx(130 / 250)
    assert spec.rates_from_counters(100, [70, 40, 20], num_draft_tokens=300)["full_drafts"] is True
    with pytest.raises(ValueError, match=r"num_draft_tokens = 301 must lie between.*k x num_drafts \(300\)"):
        spec.rates_from_counters(100, [70, 40, 20], num_draft_tokens=301)


def _simulate_engine(n_requests, max_tokens, k, rate, seed=0):
    """vLLM V1's accounting, written out: the prefill step samples the first token; each later
    step verifies k drafts, counts the accepted prefix, appends accepted + 1 tokens, then trims at
    max_tokens."""
    rng = random.Random(seed)
    drafts = accepted = generated = trimmed = 0
    for _ in range(n_requests):
        out = 1  # prefill step: one token, no draft
        while out < max_tokens:
            n = 0
            while n < k and rng.random() < rate:
                n += 1
            drafts, accepted = drafts + 1, accepted + n
            keep = min(n + 1, max_tokens - out)
            trimmed += n + 1 - keep
            out += keep
        generated += out
    return drafts, accepted, generated, trimmed


def test_token_identity_holds_for_the_engines_accounting():
    drafts, accepted, generated, trimmed = _simulate_engine(8, max_tokens=50, k=4, rate=0.7)
    assert trimmed > 0  # some requests overshot max_tokens inside an accepted run
    c = spec.check_token_count(generated, steps=8 + drafts, num_accepted=accepted, num_requests=8, k=4)
    assert c["ok"] and c["trimmed"] == trimmed and c["expected"] == generated + trimmed
    assert spec.tokens_from_counters(8 + drafts, accepted) == generated + trimmed


def test_token_identity_flags_counts_that_cannot_be():
    # 104 steps + 128 accepted = 232 tokens at most; a stop trims at most k = 3 per request (12)
    assert spec.check_token_count(232, steps=104, num_accepted=128, num_requests=4, k=3)["ok"]
    assert spec.check_token_count(220, steps=104, num_accepted=128, num_requests=4, k=3)["ok"]
    assert not spec.check_token_count(233, steps=104, num_accepted=128, num_requests=4, k=3)["ok"]
    assert not spec.check_token_count(219, steps=104, num_accepted=128, num_requests=4, k=3)["ok"]
    # trimming removes accepted tokens only: with 5 accepted, no more than 5 can go
    assert not spec.check_token_count(104, steps=110, num_accepted=5, num_requests=4, k=3)["ok"]
    with pytest.raises(ValueError, match="num_requests must be an int >= 1"):
        spec.check_token_count(10, steps=10, num_accepted=0, num_requests=0, k=3)


# ---- cost per step ------------------------------------------------------------------------------


def test_step_cost_adds_verify_drafts_and_overhead():
    assert spec.step_cost(0.020, 0.002, 4) == pytest.approx(0.028)  # 20 + 4 x 2 ms
    assert spec.step_cost(0.010, 0.0, 5, proposer_overhead_s=0.0003) == pytest.approx(0.0103)  # ngram


def test_tpot_and_speedup_hand_case():
    # 20 ms baseline; verify 22 ms + 4 drafts of 2 ms = 30 ms a step; alpha 0.5 at k = 4: 1.9375 tokens
    tokens = spec.expected_tokens_uniform(0.5, 4)
    assert tokens == pytest.approx(1.9375)
    assert spec.predicted_tpot(0.022, 0.002, 4, tokens) == pytest.approx(0.030 / 1.9375)
    assert spec.predicted_speedup(0.020, 0.022, 0.002, 4, tokens) == pytest.approx(20 * 1.9375 / 30)
    # nothing accepted: a dearer step for the same one token, a slowdown of 20 / 30
    assert spec.predicted_speedup(0.020, 0.022, 0.002, 4, 1.0) == pytest.approx(2 / 3)


def test_cost_inputs_are_checked():
    with pytest.raises(ValueError, match=r"tokens_per_step must be in \[1, k \+ 1\] = \[1, 3\] for k=2"):
        spec.predicted_tpot(0.01, 0.001, 2, tokens_per_step=3.5)
    with pytest.raises(ValueError, match="draft_step_s must be >= 0 s"):
        spec.step_cost(0.01, -0.001, 2)
    with pytest.raises(ValueError, match="target_verify_s must be a number > 0"):
        spec.step_cost(0.0, 0.001, 2)
    with pytest.raises(ValueError, match="baseline_tpot_s"):
        spec.predicted_speedup(0, 0.01, 0.001, 2, 2.0)
    with pytest.raises(ValueError, match="proposer_overhead_s must be a finite number"):
        spec.step_cost(0.01, 0.0, 2, proposer_overhead_s=float("nan"))


def test_breakeven_hand_cases():
    # k = 1, ngram (no draft cost): a 15 ms verify against a 10 ms step needs 1.5 tokens: alpha 0.5
    assert spec.breakeven_length(0.010, 0.015, 0.0, 1) == pytest.approx(1.5)
    assert spec.breakeven_acceptance(0.010, 0.015, 0.0, 1) == pytest.approx(0.5)
    # k = 2: 1 + a + a^2 = 1.5
    assert spec.breakeven_acceptance(0.010, 0.015, 0.0, 2) == pytest.approx((math.sqrt(3) - 1) / 2)
    # a verify step no dearer than the plain one pays with nothing accepted
    assert spec.breakeven_acceptance(0.010, 0.010, 0.0, 3) == 0.0
    # 41 ms a step can never pay at k = 3: 4 tokens x 10 ms is the most it can buy back
    assert spec.breakeven_acceptance(0.010, 0.038, 0.001, 3) is None
    assert spec.breakeven_acceptance(0.010, 0.037, 0.001, 3) == pytest.approx(1.0)  # exactly 40 ms


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_speedup_is_one_at_the_breakeven_rate(k):
    base, verify, draft, over = 0.012, 0.014, 0.0008, 0.0002
    alpha = spec.breakeven_acceptance(base, verify, draft, k, over)
    tokens = spec.expected_tokens_uniform(alpha, k)
    assert spec.predicted_speedup(base, verify, draft, k, tokens, over) == pytest.approx(1.0, abs=1e-9)
    if alpha < 0.99:
        above = spec.expected_tokens_uniform(alpha + 0.01, k)
        assert spec.predicted_speedup(base, verify, draft, k, above, over) > 1.0


def test_sweep_table_rows():
    rows = spec.sweep_table(0.010, {3: 0.012, 1: 0.011}, 0.0, lengths=[1.5, 3.0])
    # k = 1 can emit 2 tokens at most: 3.0 is skipped there; rows come sorted by k
    assert [(r["k"], r["tokens_per_step"]) for r in rows] == [(1, 1.5), (3, 1.5), (3, 3.0)]
    k1 = rows[0]
    assert k1["alpha"] == pytest.approx(0.5) and k1["speedup"] == pytest.approx(10 * 1.5 / 11)
    assert k1["breakeven_alpha"] == pytest.approx(0.1)  # 11 / 10 = 1 + a
    for r in rows:  # a row pays exactly when its rate beats its k's break-even rate
        assert (r["speedup"] > 1) == (r["alpha"] > r["breakeven_alpha"])


def test_sweep_table_never_pays_and_errors():
    rows = spec.sweep_table(0.010, {2: 0.035}, 0.0, alphas=[0.0, 1.0])  # 35 ms > 3 x 10 ms
    assert all(r["breakeven_alpha"] is None and r["speedup"] < 1 for r in rows)
    with pytest.raises(ValueError, match="exactly one grid"):
        spec.sweep_table(0.010, {2: 0.012}, 0.0)
    with pytest.raises(ValueError, match="exactly one grid"):
        spec.sweep_table(0.010, {2: 0.012}, 0.0, alphas=[0.5], lengths=[2.0])
    with pytest.raises(ValueError, match="target_verify_s must map each k"):
        spec.sweep_table(0.010, {}, 0.0, alphas=[0.5])
    with pytest.raises(ValueError, match=r"target_verify_s\[2\] must be a number > 0"):
        spec.sweep_table(0.010, {2: -1.0}, 0.0, alphas=[0.5])
    with pytest.raises(ValueError, match="alphas item"):
        spec.sweep_table(0.010, {2: 0.012}, 0.0, alphas=[80])


# ---- streaming ----------------------------------------------------------------------------------


def test_per_token_gaps_spread_each_chunk_and_match_the_client():
    times, sizes = [0.20, 0.26, 0.29, 0.35], [2, 3, 1, 3]
    r = spec.pooled_itl([(times, sizes)])
    assert r["per_chunk_gaps"] == pytest.approx([0.06, 0.03, 0.06])
    # first chunk: 1 gap of 0; then 3 x 0.02, 1 x 0.03, 3 x 0.02
    assert r["per_token_gaps"] == pytest.approx([0.0, 0.02, 0.02, 0.02, 0.03, 0.02, 0.02, 0.02])
    assert len(r["per_token_gaps"]) == sum(sizes) - 1
    assert sum(r["per_token_gaps"]) == pytest.approx(times[-1] - times[0])
    client = RequestResult(1, 0.0, ok=True, ttft=times[0], e2e=times[-1], chunk_times=times,
                           chunk_tokens=sizes)
    assert r["per_token_gaps"] == pytest.approx(client.itl)
    assert r["per_chunk"].p50 == pytest.approx(0.06) and r["per_token"].p50 == pytest.approx(0.02)
    assert r["tokens"] == 9 and r["chunks"] == 4


def test_one_token_chunks_make_both_views_equal():
    times = [0.1 + 0.01 * i + 0.003 * (i % 3) for i in range(30)]
    r = spec.pooled_itl([(times, [1] * 30)])
    assert r["per_chunk_gaps"] == r["per_token_gaps"]
    assert r["per_chunk"].p99 == r["per_token"].p99 and r["tokens_per_chunk"] == 1.0


def test_pooled_streams_and_stream_errors():
    r = spec.pooled_itl([([0.0, 0.04], [1, 4]), ([0.5], [3]), ([1.0, 1.01, 1.02], [1, 1, 1])])
    assert r["per_chunk"].n == 3 and r["per_token"].n == 4 + 2 + 2  # the single chunk adds 2 zeros
    with pytest.raises(ValueError, match="one entry per chunk, got 3 times and 2 sizes"):
        spec.pooled_itl([([0.0, 0.1, 0.2], [1, 1])])
    with pytest.raises(ValueError, match=r"chunk_times of streams\[0\] must not decrease"):
        spec.pooled_itl([([0.0, 0.2, 0.1], [1, 1, 1])])
    with pytest.raises(ValueError, match=r"chunk_sizes\[1\] of streams\[0\] must be an int >= 1"):
        spec.pooled_itl([([0.0, 0.2], [1, 0])])
    with pytest.raises(ValueError, match="two chunks or more"):
        spec.pooled_itl([([0.3], [5])])
    with pytest.raises(ValueError, match=r"streams\[1\] must be a pair"):
        spec.pooled_itl([([0.0, 0.1], [1, 1]), [0.1, 0.2, 0.3]])


# ---- published anchors --------------------------------------------------------------------------


def test_published_anchors_say_what_they_quote():
    # the number in each quote is the speedup (or, for a slowdown, its inverse): a typo in either shows
    for a in spec.PUBLISHED:
        quoted = float(re.search(r"\d+(\.\d+)?", a.quoted).group())
        slower = "slowdown" in a.quoted
        assert (a.speedup < 1) == slower, a.name
        assert (1 / a.speedup if slower else a.speedup) == pytest.approx(quoted), a.name
        assert a.status == "published" and a.url.startswith("https://") and a.conditions


# ---- measured runs (lab 10's analysis of experiments.spec_run) -----------------------------------

def _run(requests, batch=1, **counters):
    base = {"num_drafts": None, "num_draft_tokens": None, "num_accepted_tokens": None,
            "accepted_per_pos": None, "steps": None, "generated": None}
    return {"batch": batch, "requests": requests, "counters": base | counters}


def test_run_summary_plain_run_has_one_token_per_step_and_no_acceptance():
    r = spec.run_summary(_run([{"n_out": 11, "decode": 0.10}, {"n_out": 6, "decode": 0.05}], steps=17))
    assert r["tpot_s"] == pytest.approx(0.15 / 15)  # the first token of each request is the prefill's
    assert r["tokens_per_step"] == 1.0 and r["acceptance"] is None and r["identity"] is None


def test_run_summary_checks_the_token_identity_at_batch_one_only():
    reqs = [{"n_out": 20, "decode": 0.1}]
    c = dict(num_drafts=5, num_draft_tokens=20, num_accepted_tokens=12, accepted_per_pos=[5, 4, 2, 1])
    good = spec.run_summary(_run(reqs, steps=8, **c))  # 8 steps + 12 accepted = 20 received
    assert good["identity"]["ok"] and good["identity"]["trimmed"] == 0
    bad = spec.run_summary(_run(reqs, steps=3, **c))  # 15 < 20: the counters miss tokens
    assert not bad["identity"]["ok"]
    assert spec.run_summary(_run(reqs, batch=4, steps=8, **c))["identity"] is None  # a step serves 4 requests


def test_verify_step_and_prediction_round_trip():
    # 2 requests, 30 engine steps: 2 prefill, 20 drafted, 8 plain at 20 ms; verify steps 25 ms
    run = {"decode_s": 8 * 0.020 + 20 * 0.025, "steps": 30, "requests": 2, "drafts": 20, "decode_tokens": 80}
    v = spec.verify_step_seconds(run, 0.020)
    assert v == pytest.approx(0.025)
    assert spec.predicted_decode_tpot(run, 0.020, v) == pytest.approx(run["decode_s"] / 80)
    with pytest.raises(ValueError, match="drafted nothing"):
        spec.verify_step_seconds(run | {"drafts": 0}, 0.020)


def test_significant_rise_uses_the_error_of_the_difference():
    assert spec.significant_rise([0.6, 0.7], [0.05, 0.05])[0]  # 0.1 < 3 x 0.071
    ok, excess = spec.significant_rise([0.6, 0.9], [0.05, 0.05])
    assert not ok and excess == pytest.approx(0.3 - 3 * (2 * 0.05**2) ** 0.5, abs=1e-3)
    assert spec.significant_rise([0.9, 0.2, 1.0], [0.01, 0.05, float("inf")])[0]  # unreached position left out
    with pytest.raises(ValueError, match="one value per rate"):
        spec.significant_rise([0.5, 0.4], [0.1])
