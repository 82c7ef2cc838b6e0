"""Lab 04's steady-state step model: the share of steps that prefill, the size and price of such a
step, the steady step, and the measurements behind them on scripted engines (hand-worked numbers)."""

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


# --- the step that prefills: its size, its price and the steady step --------------------------


def test_prefill_step_size_counts_the_decoders_beside_the_prompts():
    # c = 8, outputs of 4: 2 prompts a step, 1 - (3/4)^8 of the steps prefill -> 2.2 prompts beside 5.8 decoders
    s = roofline.prefill_step_size(8, [4] * 8, prompt_len=32)
    k = 2 / (1 - 0.75 ** 8)
    assert s["prompts_per_prefill_step"] == pytest.approx(k)
    assert s["decoders"] == pytest.approx(8 - k)
    assert s["tokens"] == pytest.approx(8 - k + 32 * k)


def test_prefill_step_size_stays_inside_the_budget():
    # 4 slots, outputs of 8: 0.5 prompts of 100 tokens a step in 100 tokens of room -> half the steps, 1 prompt each
    s = roofline.prefill_step_size(4, [8, 8], prompt_len=100, max_num_batched_tokens=104)
    assert s["prompts_per_prefill_step"] == pytest.approx(1.0)
    assert s["tokens"] == pytest.approx(103.0)  # 3 decoders + 100 prompt tokens, inside 104
    big = roofline.prefill_step_size(64, [2] * 4, prompt_len=512, max_num_batched_tokens=1024)
    assert big["tokens"] == pytest.approx(1024.0)  # the budget caps the step


def test_prefill_step_seconds_interpolates_floors_and_extends():
    curve = {"256": 0.010, "512": 0.012, "2048": 0.036}  # JSON keys are strings
    assert roofline.prefill_step_seconds(curve, 64) == pytest.approx(0.010)  # the floor
    assert roofline.prefill_step_seconds(curve, 1280) == pytest.approx(0.024)  # halfway 512 -> 2048
    assert roofline.prefill_step_seconds(curve, 3584) == pytest.approx(0.060)  # the last slope, 1536 tokens on
    assert roofline.prefill_step_seconds({"100": 0.005}, 300) == pytest.approx(0.015)  # one point: proportional
    with pytest.raises(ValueError, match="at least one measured step size"):
        roofline.prefill_step_seconds({}, 10)


def test_prefill_step_seconds_reads_a_step_off_its_own_side_of_the_graph_boundary():
    # graphs up to 512 tokens: 512 is fast (graphed), 768 and 1024 are not
    curve = {"256": 0.012, "512": 0.014, "768": 0.024, "1024": 0.028}
    assert roofline.prefill_step_seconds(curve, 640, graphed_max=512) == pytest.approx(0.022)  # down the 768-1024 slope
    assert roofline.prefill_step_seconds(curve, 640) == pytest.approx(0.019)  # across the jump: too cheap
    assert roofline.prefill_step_seconds(curve, 384, graphed_max=512) == pytest.approx(0.013)  # graphed side only
    assert roofline.prefill_step_seconds(curve, 896, graphed_max=512) == pytest.approx(0.026)
    # far below the ungraphed points, never under the largest graphed step
    assert roofline.prefill_step_seconds({"512": 0.014, "768": 0.024, "1024": 0.044}, 520, graphed_max=512) \
        == pytest.approx(0.014 + 0.0)  # 0.024 - 0.020 x 248/256 < 0.014: floored
    # one side without points: all of them, as without a boundary
    assert roofline.prefill_step_seconds({"256": 0.010, "512": 0.012}, 1024, graphed_max=512) == pytest.approx(0.016)
    assert roofline.prefill_step_seconds({"768": 0.024}, 256, graphed_max=512) == pytest.approx(0.024)
    with pytest.raises(ValueError, match="graphed_max must be"):
        roofline.prefill_step_seconds(curve, 640, graphed_max=0)


def test_steady_step_weights_the_two_kinds_of_step():
    r = roofline.steady_step_seconds({"prefill_share": 0.25}, decode_s=0.010, prefill_step_s=0.050)
    assert r == pytest.approx(0.25 * 0.050 + 0.75 * 0.010)
    assert roofline.steady_step_seconds({"prefill_share": 1.0}, 0.010, 0.050) == pytest.approx(0.050)


def test_steady_step_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"prefill_share must be in \[0, 1\]"):
        roofline.steady_step_seconds({"prefill_share": 1.5}, 0.01, 0.02)
    with pytest.raises(ValueError, match="decode_s must be a number > 0"):
        roofline.steady_step_seconds({"prefill_share": 0.5}, 0.0, 0.02)


# --- experiments.prefill_ladder, prefill_steps and capped_run on scripted engines -----------------


def test_prefill_ladder_stops_at_the_largest_step_needed():
    assert experiments.prefill_ladder(256, 256) == [1]
    assert experiments.prefill_ladder(256, 257, budget=16384) == [1, 2]
    assert experiments.prefill_ladder(100, 1e9, budget=1000) == [1, 2, 4, 8, 10]  # the budget's 10 prompts
    assert experiments.prefill_ladder(100, 1e9, budget=1000, max_seqs=3) == [1, 2, 3]


def test_prefill_ladder_adds_both_sides_of_the_graph_boundary_when_steps_pass_it():
    assert experiments.prefill_ladder(256, 5104, budget=8192, max_seqs=1024, graphed_max=512) == [1, 2, 3, 4, 8, 16, 32]
    assert experiments.prefill_ladder(256, 400, budget=8192, graphed_max=512) == [1, 2]  # no step past it: as before
    assert experiments.prefill_ladder(100, 1e9, budget=1000, graphed_max=512) == [1, 2, 4, 5, 6, 8, 10]


def test_point_ladder_brackets_a_step_on_its_side_of_the_boundary():
    assert experiments.point_ladder(716, 256, 8192, 1024, graphed_max=512) == [3, 4]  # 768 and 1024: both ungraphed
    assert experiments.point_ladder(716, 256, 8192, 1024) == [2, 3]  # no graphs: the two around it
    assert experiments.point_ladder(500, 256, 8192, 1024, graphed_max=512) == [1, 2]  # 512 is still graphed
    assert experiments.point_ladder(1297, 256, 8192, 1024, graphed_max=512) == [5, 6]
    assert experiments.point_ladder(8000, 256, 8192, 1024, graphed_max=512) == [31, 32]  # the budget's 32 prompts
    assert experiments.point_ladder(100, 256, 8192, 1) == [1]  # one slot: one prompt
    with pytest.raises(ValueError, match="tokens must be"):
        experiments.point_ladder(0, 256)


def test_graph_max_reads_the_capture_sizes_and_none_without_graphs():
    def llm(sizes, eager=False, mode="FULL_AND_PIECEWISE"):
        comp = NS(cudagraph_capture_sizes=sizes, cudagraph_mode=NS(name=mode))
        return NS(llm_engine=NS(vllm_config=NS(model_config=NS(enforce_eager=eager), compilation_config=comp)))

    assert experiments.graph_max(llm([1, 2, 4, 8, 512, 496])) == 512
    assert experiments.graph_max(llm([1, 2], eager=True)) is None
    assert experiments.graph_max(llm([1, 2], mode="NONE")) is None
    assert experiments.graph_max(llm([1, 2], mode="FULL_DECODE_ONLY")) is None  # no graph for a prefilling step
    assert experiments.graph_max(llm([])) is None
    assert experiments.graph_max(NS()) is None  # an engine that does not say


class PrefillLLM:
    """`generate` runs all prompts in one step of 2 ms + 10 us per token on a clock of its own."""

    def __init__(self):
        self.now, self.calls = 0.0, []

    def generate(self, prompts, sp, use_tqdm=False):
        tokens = sum(len(p["prompt_token_ids"]) for p in prompts)
        self.calls.append((len(prompts), tokens, sp.max_tokens))
        start, self.now = self.now, self.now + 0.002 + 10e-6 * tokens
        return [NS(metrics=NS(scheduled_ts=start, first_token_ts=self.now)) for _ in prompts]


def test_prefill_steps_times_each_size_by_the_engine_clock():
    pytest.importorskip("vllm")
    llm = PrefillLLM()
    out = experiments.prefill_steps(llm, prompt_len=64, counts=[1, 4], vocab_size=1000, repeats=3)
    assert list(out) == ["64", "256"]
    assert out["256"]["prompts"] == 4 and len(out["256"]["samples"]) == 3
    assert out["256"]["seconds"] == pytest.approx(0.002 + 10e-6 * 256)
    assert out["256"]["spread"] == pytest.approx(0.0)
    assert [c[:2] for c in llm.calls] == [(1, 64)] * 3 + [(4, 256)] * 3 and {c[2] for c in llm.calls} == {1}


class HiccupLLM(PrefillLLM):
    """Like PrefillLLM, but the host steals 10 ms from every other step."""

    def generate(self, prompts, sp, use_tqdm=False):
        out = super().generate(prompts, sp, use_tqdm)
        if len(self.calls) % 2:
            self.now += 0.010
            for o in out:
                o.metrics.first_token_ts = self.now
        return out


def test_prefill_steps_keeps_the_fastest_sample_and_reports_the_spread():
    pytest.importorskip("vllm")
    out = experiments.prefill_steps(HiccupLLM(), prompt_len=100, counts=[1], vocab_size=1000, repeats=5)
    clean = 0.002 + 10e-6 * 100
    assert sorted(out["100"]["samples"]) == pytest.approx([clean] * 2 + [clean + 0.010] * 3)
    assert out["100"]["seconds"] == pytest.approx(clean)  # the median would be the hiccup's
    assert out["100"]["spread"] == pytest.approx(0.010 / clean)


class SlotEngine:
    """Continuous batching, scripted: each step prefills at most `admit` waiting requests (FCFS;
    each gets its first token) and gives every other running request a token. Counts generated
    tokens, prompt tokens and steps like vLLM's metrics (a step with nothing to run is not one:
    the clock moves, the step counter does not), and logs both token counts after each finish
    (`finish_log[i]`: after the step that finished the (i+1)-th request)."""

    def __init__(self, admit=2, delay=0):
        self.admit, self.delay, self.waiting, self.running = admit, delay, [], {}
        self.tokens = self.prompt_tokens = self.steps = self.clock = 0
        self.finish_log = []
        self.vllm_config = NS(scheduler_config=NS(max_num_seqs=1024, max_num_batched_tokens=1 << 20))

    def add_request(self, rid, prompt, sp):
        self.waiting.append((rid, len(prompt["prompt_token_ids"]), sp.max_tokens, self.clock))

    def has_unfinished_requests(self):
        return bool(self.waiting or self.running)

    def step(self):
        self.clock += 1
        ready = [w for w in self.waiting if w[3] <= self.clock - 1 - self.delay][:self.admit]  # `delay` steps late
        for rid, plen, n, _ in ready:
            self.running[rid] = {"left": n, "n": 0}
            self.prompt_tokens += plen
        self.waiting = [w for w in self.waiting if w not in ready]
        self.steps += bool(self.running)
        done = []
        for rid, r in list(self.running.items()):
            r["left"], r["n"] = r["left"] - 1, r["n"] + 1
            self.tokens += 1
            if r["left"] == 0:
                done.append((rid, r["n"]))
                del self.running[rid]
        self.finish_log += [(self.tokens, self.prompt_tokens)] * len(done)
        m = NS(queued_ts=0.0, scheduled_ts=0.0, first_token_ts=0.0, last_token_ts=0.0, first_token_latency=0.0)
        return [NS(request_id=rid, finished=True, outputs=[NS(token_ids=[0] * n)], metrics=m) for rid, n in done]

    def llm(self, prompt_counter=True):
        def get_metrics():
            m = [NS(name="vllm:generation_tokens", value=self.tokens), NS(name="vllm:iteration_tokens_total", count=self.steps)]
            return m + ([NS(name="vllm:prompt_tokens", value=self.prompt_tokens)] if prompt_counter else [])
        return NS(llm_engine=self, get_metrics=get_metrics)


def test_capped_run_window_opens_once_the_first_prompts_are_prefilled():
    pytest.importorskip("vllm")
    eng = SlotEngine(admit=2)
    # 8 slots, 32 requests of 16 tokens, 2 prefilled per step: the first 8 take 4 steps, and the
    # 1-token requests finish during them; the window opens at the first finish after that burst
    # (8 x 16 = 128 prompt tokens counted) and closes at the 24th (32 - 8: the last submission)
    p = experiments.capped_run(eng.llm(), [[1] * 16] * 32, [1, 3, 6, 9] * 8, 8)
    assert p["running"] == 8 and len(p["requests"]) == 32 and sum(r["n_out"] for r in p["requests"]) == eng.tokens
    # worked by hand: steps 1-4 admit requests 0-7; finishes 1-3 (requests 0, 4, 1) come in steps 1 and 3,
    # the 4th (request 5) in step 5, after step 4 has prefilled the last of the first 8 prompts
    assert eng.finish_log[2][1] == 96 and eng.finish_log[3][1] >= 128
    assert p["window"]["opened_by"] == "first prompts prefilled"
    assert p["window"]["tokens"] == eng.finish_log[23][0] - eng.finish_log[3][0]
    # one slot: the first finish already follows its prefill
    eng.__init__(admit=2)
    p = experiments.capped_run(eng.llm(), [[1] * 16] * 4, [3, 2, 4, 2], 1)
    assert p["window"]["tokens"] == eng.finish_log[2][0] - eng.finish_log[0][0]


@pytest.mark.parametrize("delay", [0, 1, 3])
def test_turnover_lag_counts_the_steps_a_freed_slot_waits(delay):
    pytest.importorskip("vllm")
    # an engine that takes a request into the step `delay` steps after the one it arrived during:
    # every finish leaves its slot empty for exactly `delay` steps (the window's edges shift it
    # by at most one finish's worth)
    eng = SlotEngine(admit=100, delay=delay)
    p = experiments.capped_run(eng.llm(), [[1] * 16] * 96, [2, 5, 7, 11] * 24, 8)
    w = p["window"]
    assert w["finished"] >= 40
    assert experiments.turnover_lag(p) == pytest.approx(delay, abs=(delay + 1) / w["finished"])


def test_closed_loop_tokens_per_step_matches_a_lagging_engine():
    pytest.importorskip("vllm")
    # the lab's way: the lag measured with 8 clients prices every concurrency. A lone client's
    # empty slot leaves the engine idle (no step counted): one token per step, whatever the lag;
    # with more clients the steps go on, and the empty slot-steps are what the model prices
    lens = [6, 9, 12, 15] * 30

    def run(slots):
        eng = SlotEngine(admit=100, delay=2)
        return experiments.capped_run(eng.llm(), [[1] * 16] * len(lens), lens, slots)

    lag = experiments.turnover_lag(run(8))
    assert lag == pytest.approx(2.0, abs=0.2)
    for slots in (1, 2, 4, 8):
        w = run(slots)["window"]
        model = roofline.closed_loop_tokens_per_step(slots, lens, lag)
        assert w["tokens"] / w["steps"] == pytest.approx(model, rel=0.05), slots


def test_turnover_lag_is_none_without_a_window_and_tokens_per_step_rejects_bad_lags():
    assert experiments.turnover_lag({"running": 8, "window": None}) is None
    assert experiments.turnover_lag({"running": 8, "window": {"steps": 10, "tokens": 80, "finished": 0}}) is None
    assert roofline.closed_loop_tokens_per_step(64, [30, 34], 0.0) == 64
    assert roofline.closed_loop_tokens_per_step(64, [30, 34], 2.0) == pytest.approx(64 * 32 / 34)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="lag_steps"):
            roofline.closed_loop_tokens_per_step(8, [10], bad)


def test_capped_run_window_without_a_prompt_counter_waits_one_turnover():
    pytest.importorskip("vllm")
    eng = SlotEngine(admit=2)
    p = experiments.capped_run(eng.llm(prompt_counter=False), [[1] * 16] * 32, [1, 3, 6, 9] * 8, 8)
    assert p["window"]["tokens"] == eng.finish_log[23][0] - eng.finish_log[7][0]  # the 8th finish to the 24th
    assert p["window"]["opened_by"] == "one turnover of the slots"
    frozen = SlotEngine(admit=2)
    llm = frozen.llm()
    get = llm.get_metrics
    llm.get_metrics = lambda: [m if m.name != "vllm:prompt_tokens" else NS(name=m.name, value=0) for m in get()]
    p = experiments.capped_run(llm, [[1] * 16] * 32, [1, 3, 6, 9] * 8, 8)  # a counter that never moves: the same rule
    assert p["window"]["tokens"] == frozen.finish_log[23][0] - frozen.finish_log[7][0]
    eng.__init__(admit=2)  # a short run (12 requests, 8 slots): half-way to the last submission, the 2nd finish to the 4th
    p = experiments.capped_run(eng.llm(prompt_counter=False), [[1] * 16] * 12, [1, 3, 6, 9] * 3, 8)
    assert p["window"]["tokens"] == eng.finish_log[3][0] - eng.finish_log[1][0]


def test_capped_run_without_a_steady_window_reports_the_whole_run():
    pytest.importorskip("vllm")
    eng = SlotEngine(admit=1)  # 8 slots filled one per step: the burst outlasts 12 requests' last submission
    p = experiments.capped_run(eng.llm(), [[1] * 16] * 12, [1, 3, 6, 9] * 3, 8)
    assert p["window"] is None and p["window_tok_s"] == pytest.approx(p["wall_tok_s"])


class SweepLLM:
    """An offline engine for `vllm_sweep`: `SlotEngine` schedules the capped runs, `generate` runs
    the calibration steps on a clock of its own (2 ms + 10 us per prompt token to the first token,
    1 ms per later token), with CUDA graphs up to 64 tokens and a 4,096-token step budget. `log`
    holds, in order, each `generate` call's prompt tokens and each request a capped run adds."""

    def __init__(self):
        self.log, self.now = [], 0.0
        self.llm_engine = eng = SlotEngine(admit=4)
        eng.vllm_config = NS(scheduler_config=NS(max_num_seqs=8, max_num_batched_tokens=4096),
                             model_config=NS(enforce_eager=False),
                             compilation_config=NS(cudagraph_capture_sizes=[1, 2, 4, 8, 16, 32, 64],
                                                   cudagraph_mode=NS(name="FULL_AND_PIECEWISE")))
        add = eng.add_request
        eng.add_request = lambda rid, prompt, sp: (self.log.append("add"), add(rid, prompt, sp))[1]
        self.get_metrics = eng.llm().get_metrics

    def generate(self, prompts, sp, use_tqdm=False):
        self.log.append(sum(len(p["prompt_token_ids"]) for p in prompts))
        start, first = self.now, self.now + 0.002 + 10e-6 * self.log[-1]
        self.now = first + 0.001 * (sp.max_tokens - 1)
        return [NS(metrics=NS(scheduled_ts=start, first_token_ts=first, last_token_ts=self.now)) for _ in prompts]


def test_vllm_sweep_times_each_points_own_step_sizes_just_before_it(monkeypatch):
    pytest.importorskip("vllm")
    import contextlib

    from labs_lib import engine
    from labs_lib.tiers import CPU

    llm = SweepLLM()
    monkeypatch.setattr(engine, "offline_llm", lambda spec, prof, **kw: contextlib.nullcontext(llm))
    loads = {str(c): {"prompts": [[1] * 32] * (4 * c), "out_lens": [2, 6] * (2 * c)} for c in (2, 8)}
    out = experiments.vllm_sweep("tiny-llama", CPU.to_dict(), loads, engine={"max_num_seqs": 8},
                                 calibrate=[1, 8], progress=False, peak_repeats=1)
    assert out["graph_max"] == 64 and out["token_budget"] == 4096
    # mean output 4: at C=8 a prefilling step holds 2.22 prompts beside 5.78 decoders, 76.8 tokens, past the
    # 64-token graphs; at C=2, 1.14 prompts beside 0.86, 37.4 tokens, graphed
    assert [int(t) for t in out["prefill_steps"]] == [32, 64, 96, 128]  # up to 76.8, and 2 | 3 prompts at the edge
    expect = {"2": [32, 64], "8": [96, 128]}  # each on its own side of the graphs
    starts = [i for i, x in enumerate(llm.log) if x == "add" and llm.log[i - 1] != "add"]  # each capped run's first
    for c, first_add in zip(("2", "8"), starts, strict=False):
        steps = out["points"][c]["prefill_steps"]
        assert [int(t) for t in steps] == expect[c]
        assert llm.log[first_add - 10:first_add] == [t for t in expect[c] for _ in range(5)]  # 5 each, then the point
        assert all(m["seconds"] == pytest.approx(0.002 + 10e-6 * int(t)) for t, m in steps.items())


def test_prefill_ladder_refuses_a_prompt_longer_than_the_budget():
    with pytest.raises(ValueError, match="does not fit the engine's step budget of 128 tokens"):
        experiments.prefill_ladder(256, 1000, budget=128)


def test_prefill_step_seconds_never_falls_past_the_last_point():
    assert roofline.prefill_step_seconds({256: 0.020, 512: 0.015}, 4096) == pytest.approx(0.015)


def test_batching_pair_interleaves_repeats_and_keeps_the_median_run(monkeypatch):
    walls, calls = {"continuous": iter([3.0, 2.0, 2.5]), "static": iter([6.0, 5.0, 7.0])}, []

    def fake_capped(llm, prompts, out_lens, batch):
        calls.append("c")
        w = next(walls["continuous"])
        return {"wall_s": w, "requests": [{"submitted": 0.5, "ttft": w / 10, "e2e": w}]}

    def fake_static(llm, prompts, out_lens, batch):
        calls.append("s")
        return {"wall_s": next(walls["static"])}

    monkeypatch.setattr(experiments, "capped_run", fake_capped)
    monkeypatch.setattr(experiments, "static_batches", fake_static)
    monkeypatch.setattr(experiments, "decode_step", lambda *a, **k: 0.01)
    out = experiments.batching_pair(None, [[1] * 4], [2], batch=1, vocab_size=10, repeats=3)
    assert calls == ["c", "s", "c", "s", "c", "s"]
    assert out["continuous_walls"] == [3.0, 2.0, 2.5] and out["static_walls"] == [6.0, 5.0, 7.0]
    assert out["continuous"]["wall_s"] == 2.5 and out["static"]["wall_s"] == 6.0  # the medians
    assert out["continuous"]["requests"][0]["ttft"] == pytest.approx(0.5 + 0.25)  # counted from t = 0
    assert out["continuous_first_ttfts"] == pytest.approx([0.8, 0.7, 0.75])  # every run's, in order
    walls["continuous"] = iter([3.0, 2.0])
    out = experiments.batching_pair(None, [[1] * 4], [2], batch=1, vocab_size=10, static=False, repeats=2)
    assert out["continuous"]["wall_s"] == 2.0 and "static" not in out  # of two, the faster
    with pytest.raises(ValueError, match="repeats"):
        experiments.batching_pair(None, [[1] * 4], [2], batch=1, vocab_size=10, static=False, repeats=0)


def test_vllm_sweep_runs_short_points_again_after_the_sweep_and_keeps_the_faster(monkeypatch):
    """`repeat_under_s`: points below the largest that ran shorter get a second run after the
    whole sweep, largest first; the faster run counts and both are listed, and the steps timed
    before each run are pooled."""
    pytest.importorskip("vllm")
    import contextlib

    from labs_lib import engine
    from labs_lib.tiers import CPU

    llm = SweepLLM()
    monkeypatch.setattr(engine, "offline_llm", lambda spec, prof, **kw: contextlib.nullcontext(llm))
    speeds, calls = iter([100.0, 120.0, 300.0, 150.0, 90.0, 310.0]), []

    def capped_run(llm_, prompts, out_lens, concurrency, slots=None):
        calls.append(concurrency)
        return {"window_tok_s": next(speeds), "window": None, "requests": [], "wall_tok_s": 1.0}

    monkeypatch.setattr(experiments, "capped_run", capped_run)
    loads = {str(c): {"prompts": [[1] * 32] * (4 * c), "out_lens": [2, 6] * (2 * c)} for c in (1, 2, 8)}
    out = experiments.vllm_sweep("tiny-llama", CPU.to_dict(), loads, engine={"max_num_seqs": 8}, calibrate=[1, 8],
                                 progress=False, peak_repeats=1, repeat_under_s=1e9)
    assert calls == [1, 2, 8, 2, 1, 32]  # the sweep, then 2 and 1 again (largest first), then all 32 at once
    assert out["points"]["1"]["runs_tok_s"] == [100.0, 90.0] and out["points"]["1"]["window_tok_s"] == 100.0
    assert out["points"]["2"]["runs_tok_s"] == [120.0, 150.0] and out["points"]["2"]["window_tok_s"] == 150.0
    assert out["points"]["8"]["runs_tok_s"] == [300.0]  # the largest: its repeats are the peak's
    assert all(len(m["samples"]) == 10 for m in out["points"]["2"]["prefill_steps"].values())  # 5 before each run
    assert set(out["step_s"]) == {"1", "8"}


def test_prefill_step_mix_is_binomial_given_a_prefill_and_matches_the_mean_step():
    lens = [8, 120] * 20  # mean output 64
    mix = roofline.prefill_step_mix(32, lens, prompt_len=256)
    size = roofline.prefill_step_size(32, lens, prompt_len=256)
    assert sum(m["chance"] for m in mix) == pytest.approx(1.0)
    assert sum(m["chance"] * m["prompts"] for m in mix) == pytest.approx(size["prompts_per_prefill_step"], rel=1e-4)
    assert sum(m["chance"] * m["tokens"] for m in mix) == pytest.approx(size["tokens"], rel=1e-4)
    q = 1 / 64  # P(1) / P(2) of a binomial(32, q): 2 (1 - q) / (31 q)
    assert mix[0]["chance"] / mix[1]["chance"] == pytest.approx(2 * (1 - q) / (31 * q))
    assert [m["tokens"] for m in mix[:2]] == [31 + 256, 30 + 512]


def test_prefill_step_mix_caps_a_step_at_the_budget_and_falls_back_to_full_steps_where_it_binds():
    mix = roofline.prefill_step_mix(8, [4, 4], prompt_len=100, max_num_batched_tokens=400)
    assert max(m["tokens"] for m in mix) == 400.0 and min(m["tokens"] for m in mix) == 107.0
    full = roofline.prefill_step_mix(512, [64], prompt_len=256, max_num_batched_tokens=2048)  # 8 prompts a step > budget
    assert len(full) == 1 and full[0]["chance"] == 1.0 and full[0]["tokens"] == 2048.0


def test_prefill_step_seconds_never_prices_a_step_above_a_larger_one_on_its_side():
    curve = {256: 0.0109, 512: 0.0141, 768: 0.0293, 1024: 0.0264, 2048: 0.0505}  # an H200 ladder: 768 caught slow
    assert roofline.prefill_step_seconds(curve, 768, graphed_max=512) == pytest.approx(0.0264)
    assert roofline.prefill_step_seconds(curve, 600, graphed_max=512) == pytest.approx(0.0264)
    assert roofline.prefill_step_seconds(curve, 512, graphed_max=512) == pytest.approx(0.0141)  # the graphed side alone
    assert roofline.prefill_step_seconds({256: 0.03, 512: 0.02, 1024: 0.04}, 256) == pytest.approx(0.02)
