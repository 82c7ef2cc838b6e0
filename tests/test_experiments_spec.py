"""experiments.counters_delta (the change of the spec-decode counters over one phase) and
spec_run's warm-ups and repeats (with a fake engine)."""

import contextlib
from types import SimpleNamespace as NS

from labs_lib import engine, experiments, tiers


def test_counters_delta_subtracts_scalars_and_positions_and_keeps_missing_as_none():
    before = {"num_drafts": 3, "accepted_per_pos": [2, 1], "steps": 10, "generated": None}
    after = {"num_drafts": 9, "accepted_per_pos": [7, 4], "steps": 25, "generated": 40}
    assert experiments.counters_delta(before, after) == {"num_drafts": 6, "accepted_per_pos": [5, 3],
                                                         "steps": 15, "generated": None}


def test_counters_delta_from_a_fresh_engine_counts_from_zero():
    assert experiments.counters_delta({"accepted_per_pos": None}, {"accepted_per_pos": [4, 2]}) == {
        "accepted_per_pos": [4, 2]}


def test_spec_run_warms_each_batch_untimed_and_tags_repeats(monkeypatch):
    """warm_each runs every group of a batch once before the clock starts; repeats re-time the
    workload, each request tagged with its repeat; the counters cover exactly the timed requests."""
    calls, clock = [], {"t": 0.0}

    class FakeLLM:
        def generate(self, prompts, sp, use_tqdm=False):
            calls.append(len(prompts))
            out = []
            for p in prompts:
                clock["t"] += 1.0
                m = NS(queued_ts=clock["t"], scheduled_ts=clock["t"], first_token_ts=clock["t"] + 0.1,
                       last_token_ts=clock["t"] + 0.1 + 0.01 * len(calls), first_token_latency=0.1)
                out.append(NS(metrics=m, outputs=[NS(token_ids=list(p["prompt_token_ids"]) + [7, 8])]))
            return out

        def get_metrics(self):
            return [NS(name="vllm:iteration_tokens_total", value=len(calls), count=len(calls))]

    monkeypatch.setattr(engine, "offline_llm", lambda spec, prof, **kw: contextlib.nullcontext(FakeLLM()))
    prof = tiers.resolve("cpu").to_dict()
    prompts = [[1], [2], [3], [4]]
    out = experiments.spec_run("tiny-llama", prof, {}, {"w": prompts}, max_tokens=3, batches=[2],
                               warmup=1, warm_each=True, repeats=3)
    assert calls == [1, 2, 2] + [2, 2] * 3  # engine warm-up, the batch's untimed pass, 3 timed passes
    run = out["runs"]["w@2"]
    assert [r["repeat"] for r in run["requests"]] == [0] * 4 + [1] * 4 + [2] * 4
    assert run["counters"]["steps"] == 6  # the six timed generate calls, not the warm-ups
