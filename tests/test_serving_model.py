"""Lab 04's steady-state step model: the share of steps that prefill, the mixed step's extra,
the step's price, and the measurement of the extra on a scripted engine (hand-worked numbers)."""

import math
from types import SimpleNamespace as NS

import pytest

from labs_lib import experiments, roofline
from labs_lib.models import load_config

# --- prefill_share: how many steps take a new prompt -------------------------------------------


def test_one_sequence_prefills_once_per_request():
    # one slot, requests of 10 and 30 tokens: 2 prefill steps in 40 steps; each holds 1 prompt
    s = roofline.prefill_share(1, [10, 30], prompt_len=64)
    assert s["prompts_per_step"] == pytest.approx(0.05)
    assert s["share"] == pytest.approx(0.05)
    assert s["prompts_per_prefill_step"] == pytest.approx(1.0)


def test_slots_turn_over_independently():
    # q = 1/4 per slot and step; 2 slots: no new prompt with chance (3/4)^2 = 9/16
    s = roofline.prefill_share(2, [4, 4], prompt_len=16)
    assert s["prompts_per_step"] == pytest.approx(0.5)
    assert s["share"] == pytest.approx(7 / 16)
    assert s["prompts_per_prefill_step"] == pytest.approx(0.5 / (7 / 16))


def test_many_slots_prefill_in_almost_every_step():
    # 512 slots, mean output 64: 1 - (63/64)^512 = 1 - 3.2e-4
    s = roofline.prefill_share(512, [64], prompt_len=256)
    assert s["share"] == pytest.approx(1 - (63 / 64) ** 512, rel=1e-12)
    assert s["share"] > 0.999 and s["prompts_per_step"] == pytest.approx(8.0)


def test_token_budget_spreads_prompts_over_more_steps():
    # 4 slots, q = 1/8: 0.5 prompts of 100 tokens a step = 50 tokens; room 104 - 4 = 100 -> half the steps
    # (the independent-slot share alone would be 1 - (7/8)^4 = 0.414)
    s = roofline.prefill_share(4, [8, 8], prompt_len=100, max_num_batched_tokens=104)
    assert s["share"] == pytest.approx(0.5)
    assert s["prompts_per_prefill_step"] == pytest.approx(1.0)  # 100 tokens of room: one prompt a step


def test_token_budget_binding_past_every_step_caps_at_one():
    # 2 prompts of 100 tokens a step need 200 tokens; room 100: every step prefills (and the engine falls behind)
    s = roofline.prefill_share(4, [2, 2], prompt_len=100, max_num_batched_tokens=104)
    assert s["share"] == 1.0 and s["prompts_per_prefill_step"] == pytest.approx(2.0)


def test_ample_token_budget_changes_nothing():
    assert (roofline.prefill_share(8, [16, 48], 32, max_num_batched_tokens=16384)
            == roofline.prefill_share(8, [16, 48], 32))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"concurrency": 8, "out_lens": [4], "prompt_len": 16, "max_num_batched_tokens": 8}, "must exceed the concurrency"),
    ({"concurrency": 8, "out_lens": [], "prompt_len": 16}, "at least one output length"),
    ({"concurrency": 8, "out_lens": [4, 0], "prompt_len": 16}, "out_lens item must be an int >= 1"),
    ({"concurrency": 0, "out_lens": [4], "prompt_len": 16}, "concurrency must be an int >= 1"),
    ({"concurrency": 2, "out_lens": [4], "prompt_len": 0}, "prompt_len must be an int >= 1"),
])
def test_prefill_share_rejects_impossible_workloads(kwargs, match):
    with pytest.raises(ValueError, match=match):
        roofline.prefill_share(**kwargs)


def test_serving_step_carries_the_share_and_the_budget():
    cfg = load_config("Llama-3.1-8B")
    s = roofline.serving_step(cfg, 4, prompt_len=100, out_lens=[8, 8], max_num_batched_tokens=104)
    assert s["prefill_share"] == pytest.approx(0.5) and s["prompts_per_prefill_step"] == pytest.approx(1.0)
    assert roofline.serving_step(cfg, 2, 16, [4, 4])["prefill_share"] == pytest.approx(7 / 16)
    with pytest.raises(ValueError, match="must exceed the concurrency"):
        roofline.serving_step(cfg, 64, prompt_len=100, out_lens=[8], max_num_batched_tokens=64)


# --- the mixed step's extra and the step's price ------------------------------------------------


def test_mixed_step_extra_subtracts_the_wave_tokens_at_the_prefill_rate():
    # a wave of 8 x 256 tokens made its step 60 ms longer; 2,048 tokens at 25 us = 51.2 ms -> 8.8 ms
    m = {"extra_s": 0.060, "wave_tokens": 2048, "steps": 1}
    assert roofline.mixed_step_extra(m, 25e-6) == pytest.approx(0.0088)
    assert roofline.mixed_step_extra(m | {"steps": 4}, 25e-6) == pytest.approx(0.0022)  # per step of 4


def test_mixed_step_extra_keeps_a_saving():
    # the wave cost less than its tokens at the pure-prefill rate: the extra is negative, not 0
    assert roofline.mixed_step_extra({"extra_s": 0.020, "wave_tokens": 32, "steps": 1}, 1e-3) == pytest.approx(-0.012)


def test_mixed_step_extra_rejects_bad_inputs():
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        roofline.mixed_step_extra({"extra_s": 0.01, "wave_tokens": 10, "steps": 0}, 1e-5)
    with pytest.raises(ValueError, match="prefill_s_per_token must be a number > 0"):
        roofline.mixed_step_extra({"extra_s": 0.01, "wave_tokens": 10, "steps": 1}, 0.0)


def test_mixed_extra_line_through_the_ends():
    # 2 ms at C=1, 14 ms at C=513: 12 ms over 512 sequences = 23.4375 us each
    fixed, per_seq = roofline.mixed_extra_line({1: 0.002, 513: 0.014, 128: 1.0})  # 128 ignored: a prediction
    assert per_seq == pytest.approx(12e-3 / 512)
    assert fixed == pytest.approx(0.002 - 12e-3 / 512)
    assert fixed + per_seq * 257 == pytest.approx(0.008)  # halfway


def test_mixed_extra_line_one_point_and_negative_points():
    assert roofline.mixed_extra_line({64: -0.004}) == (-0.004, 0.0)
    fixed, per_seq = roofline.mixed_extra_line({1: -0.004, 65: -0.004})
    assert fixed == pytest.approx(-0.004) and per_seq == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least one measured batch"):
        roofline.mixed_extra_line({})


def test_steady_step_adds_decode_prompt_tokens_and_the_share_of_the_mixed_extra():
    # 19 ms decode + 8 prompts x 256 tokens x 25 us (51.2 ms) + 0.9 x 10 ms = 79.2 ms
    r = roofline.steady_step_seconds({"prompts_per_step": 8.0, "prefill_share": 0.9}, decode_s=0.019,
                                     prefill_s_per_token=25e-6, prompt_len=256, mixed_extra_s=0.010)
    assert r["prefill_s"] == pytest.approx(0.0512)
    assert r["mixed_s"] == pytest.approx(0.009)
    assert r["seconds"] == pytest.approx(0.0792)
    # without a mixed extra: the old model (decode + prompt tokens)
    assert roofline.steady_step_seconds({"prompts_per_step": 8.0, "prefill_share": 0.9}, 0.019, 25e-6,
                                        256)["seconds"] == pytest.approx(0.0702)


def test_steady_step_rejects_bad_inputs():
    st = {"prompts_per_step": 1.0, "prefill_share": 1.5}
    with pytest.raises(ValueError, match=r"prefill_share must be in \[0, 1\]"):
        roofline.steady_step_seconds(st, 0.01, 1e-5, 16)
    with pytest.raises(ValueError, match="decode_s must be a number > 0"):
        roofline.steady_step_seconds(st | {"prefill_share": 0.5}, 0.0, 1e-5, 16)


# --- experiments.mixed_step on a scripted engine ---------------------------------------------------


class ScriptedEngine:
    """Every running request gets a token each step (its prefill step gives the first); a step costs
    10 ms, 17 ms when it prefills a request with a one-token budget (the wave). Outputs: every step
    for DELTA requests, when finished for FINAL_ONLY ones; timestamps on a clock of its own."""

    DECODE, MIXED = 0.010, 0.017

    def __init__(self, max_num_seqs=64, budget=4096):
        self.vllm_config = NS(scheduler_config=NS(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget))
        self.now, self.reqs = 100.0, {}

    def add_request(self, rid, prompt, sp):
        self.reqs[rid] = {"left": sp.max_tokens, "new": True, "wave": sp.max_tokens == 1,
                          "delta": sp.output_kind.name == "DELTA"}

    def has_unfinished_requests(self):
        return bool(self.reqs)

    def step(self):
        mixed = any(r["new"] and r["wave"] for r in self.reqs.values())
        self.now += self.MIXED if mixed else self.DECODE
        outs = []
        for rid, r in list(self.reqs.items()):
            r["new"], r["left"] = False, r["left"] - 1
            if r["left"] == 0:
                del self.reqs[rid]
            if r["delta"] or r["left"] == 0:
                outs.append(NS(request_id=rid, finished=r["left"] == 0, metrics=NS(last_token_ts=self.now)))
        return outs


def test_mixed_step_finds_the_extra_of_the_steps_that_prefill():
    pytest.importorskip("vllm")
    eng = ScriptedEngine()
    m = experiments.mixed_step(NS(llm_engine=eng), batch=8, wave=2, prompt_len=32, vocab_size=1000, tokens=32)
    # waves after 4, 8, ..., 24 of the probe's 32 steps (3 decode-only steps apart): 6 a run, 3 runs
    assert m["samples"] == 18 and all(r["window_steps"] == [1] * 6 for r in m["runs"])
    assert m["extra_s"] == pytest.approx(0.007, abs=1e-9)  # 17 - 10 ms
    assert m["decode_step_s"] == pytest.approx(0.010, abs=1e-9)
    assert m["steps"] == 1 and m["wave_tokens"] == 64 and m["clock"] == "engine"
    assert not eng.reqs  # everything it submitted finished


def test_mixed_step_counts_the_steps_a_wave_needs_under_the_budget():
    pytest.importorskip("vllm")
    # room 72 - 8 = 64 tokens a step beside the decoders: 3 x 50 tokens take ceil(150 / 64) = 3 steps
    m = experiments.mixed_step(NS(llm_engine=ScriptedEngine(budget=72)), batch=8, wave=3, prompt_len=50,
                               vocab_size=1000, tokens=32, repeats=1)
    assert m["steps"] == math.ceil(150 / 64) == 3


def test_mixed_step_refuses_a_wave_without_free_slots():
    pytest.importorskip("vllm")
    with pytest.raises(ValueError, match="need 66 of the engine's max_num_seqs=64"):
        experiments.mixed_step(NS(llm_engine=ScriptedEngine()), batch=64, wave=2, prompt_len=32, vocab_size=1000)


def test_mixed_steps_sizes_the_wave_as_a_steady_prefill_step():
    pytest.importorskip("vllm")
    # c = 8, outputs of 4: 2 prompts a step, 1 - (3/4)^8 = 90 % of the steps prefill -> 2.2 -> waves of 2 beside 6
    loads = {"8": {"prompts": [[1] * 32] * 8, "out_lens": [4] * 8}}
    out = experiments.mixed_steps(NS(llm_engine=ScriptedEngine(max_num_seqs=8)), loads, [1, 8], 16, 1000)
    assert (out["8"]["wave"], out["8"]["batch"], out["8"]["concurrency"]) == (2, 6, 8)
    # c = 1 (no sweep point: the largest workload's outputs): 1/4 of the steps, 1 prompt each, beside 1 decoding
    assert (out["1"]["wave"], out["1"]["batch"]) == (1, 1)
    assert out["8"]["extra_s"] == pytest.approx(0.007, abs=1e-9)
