"""Speculative decoding as arithmetic: tokens per verification step, cost per step, break-even.

One step of speculative decoding: a proposer drafts k tokens per sequence (a draft model or an
EAGLE head: k small forward passes; ngram: a lookup in the prompt, on the CPU), then the target
model verifies all of them in ONE forward pass over k + 1 tokens per sequence. It keeps the
longest prefix of drafts it agrees with and adds one token of its own: the corrected token at
the first rejection, or the bonus token when all k were accepted. A step therefore emits
1 + (accepted drafts) tokens per sequence, never fewer than 1 and never more than k + 1.

- tokens per step, from per-position rates a_i = P(draft i accepted | drafts 1..i-1 accepted):
  1 + a_1 + a_1 a_2 + ... + a_1...a_k (`expected_tokens_per_step`); with one rate a for every
  position, (1 - a^(k+1)) / (1 - a) (`expected_tokens_uniform`, inverse `alpha_for_length`).
- what vLLM counts (`rates_from_counters`, `acceptance_length`): drafts, and accepted tokens per
  position; its "mean acceptance length" is 1 + accepted / drafts, the tokens per step measured.
- cost per step: the target's step at k + 1 tokens per sequence, k draft steps and the
  proposer's overhead (`step_cost`); TPOT = cost / tokens per step; speedup = baseline / TPOT.
  Decode at small batch is memory-bound: verifying k + 1 tokens costs about as much as 1, so
  accepted drafts are almost free. At large batch the step turns compute-bound, the verify step
  costs up to (k + 1)x and every rejected draft is wasted work: `breakeven_acceptance` says which
  acceptance rate it takes to break even, `sweep_table` prices a grid for a plot.
- `check_token_count`: generated tokens = sampling steps + accepted drafts (minus what a stop
  trims), the identity that ties vLLM's counters to the tokens the client received.
- `pooled_itl`: inter-token latency per streamed chunk vs per token; a chunk carries up to
  k + 1 tokens under speculative decoding, so the two differ.
- `PUBLISHED`: others' speedups with their conditions, to print beside the lab's measurements.

>>> expected_tokens_per_step([0.8, 0.6])   # 1 + 0.8 + 0.8 x 0.6
2.28
>>> round(predicted_speedup(0.010, target_verify_s=0.011, draft_step_s=0.001, k=2,
...                         tokens_per_step=2.28), 3)   # 10 ms / ((11 + 2 x 1) ms / 2.28)
1.754
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import params, timing


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _probability(name: str, value: Any) -> float:
    v = _number(name, value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r} "
                         "(a fraction: 0.8, not 80)")
    return v


def _non_negative(name: str, value: Any, unit: str = "") -> float:
    """A number >= 0: seconds that may be 0 (an ngram proposer has no draft step), a tolerance."""
    v = _number(name, value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0{unit}, got {value!r}")
    return v


def _count(name: str, value: Any) -> int:
    """A counter value: an int, or the integral float a Prometheus scrape gives (120.0)."""
    v = _number(name, value)
    if v < 0 or v != int(v):
        raise ValueError(f"{name} must be a whole count >= 0, got {value!r} (use the difference "
                         "of two scrapes of the counter, not a rate)")
    return int(v)


def _rates(name: str, rates: Any) -> list[float]:
    if isinstance(rates, str | bytes) or not isinstance(rates, Iterable):
        raise ValueError(f"{name} must be a list of per-position rates in [0, 1], got {rates!r}")
    out = [_probability(f"{name}[{i}]", r) for i, r in enumerate(rates)]
    if not out:
        raise ValueError(f"{name} must hold one rate per draft position (k >= 1), got none")
    return out


def _tokens_per_step(value: Any, k: int) -> float:
    v = _number("tokens_per_step", value)
    if not 1.0 <= v <= k + 1:
        raise ValueError(f"tokens_per_step must be in [1, k + 1] = [1, {k + 1}] for k={k} (a step "
                         f"emits the target's own token plus 0..k accepted drafts), got {value!r}")
    return v


# ---- tokens per step ----------------------------------------------------------------------------

def expected_tokens_per_step(rates: Sequence[float]) -> float:
    """Expected tokens one verification step emits per sequence, from conditional per-position
    acceptance rates a_1..a_k (a_i = P(draft i accepted | drafts 1..i-1 accepted)):
    1 + sum_i prod_{j <= i} a_j. Draft i counts only if every draft before it was accepted (the
    target keeps the accepted prefix), hence the products; the 1 is the target's own token.

    >>> expected_tokens_per_step([0.8, 0.6])   # 1 + 0.8 + 0.48
    2.28
    >>> expected_tokens_per_step([1.0, 1.0, 1.0]), expected_tokens_per_step([0.0, 1.0])  # k + 1; 1
    (4.0, 1.0)
    """
    total, prefix = 1.0, 1.0
    for a in _rates("rates", rates):
        prefix *= a
        total += prefix
    return round(total, 12)


def expected_tokens_uniform(alpha: float, k: int) -> float:
    """Tokens per step when every position is accepted with the same conditional rate `alpha`:
    1 + alpha + ... + alpha^k = (1 - alpha^(k+1)) / (1 - alpha), and k + 1 at alpha = 1.

    >>> expected_tokens_uniform(0.5, 3)   # 1 + 0.5 + 0.25 + 0.125 = (1 - 0.0625) / 0.5
    1.875
    >>> expected_tokens_uniform(1.0, 3), expected_tokens_uniform(0.0, 3)
    (4.0, 1.0)
    """
    a = _probability("alpha", alpha)
    k = params.positive_int("k", k)
    return round(sum(a ** i for i in range(k + 1)), 12)  # the series: no 0/0 at alpha = 1


def alpha_for_length(length: float, k: int, tol: float = 1e-12) -> float:
    """The uniform rate alpha whose `expected_tokens_uniform(alpha, k)` is `length` (bisection:
    tokens per step rise with alpha). Turns a measured or configured mean acceptance length
    (vLLM's `synthetic_acceptance_length`, or `acceptance_length` of a run) into one number
    comparable across k. vLLM itself does NOT make its synthetic acceptance uniform: a length
    becomes a step schedule (3.25 at k = 4: unconditional rates 1, 1, 0.25, 0), same mean.

    >>> alpha_for_length(1.875, 3)
    0.5
    >>> alpha_for_length(1.0, 4), alpha_for_length(5.0, 4)
    (0.0, 1.0)
    """
    k = params.positive_int("k", k)
    target = _number("length", length)
    if not 1.0 <= target <= k + 1:
        raise ValueError(f"length must be in [1, k + 1] = [1, {k + 1}] for k={k} (a step emits "
                         f"1 to k + 1 tokens), got {length!r}")
    params.positive_float("tol", tol)
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if sum(mid ** i for i in range(k + 1)) < target:
            lo = mid
        else:
            hi = mid
    return round((lo + hi) / 2, 9)


# ---- vLLM's counters ----------------------------------------------------------------------------

def acceptance_length(num_drafts: float, num_accepted: float) -> float:
    """vLLM's "mean acceptance length": 1 + accepted draft tokens / drafts, i.e. the tokens each
    verification step emitted on average (counter deltas `vllm:spec_decode_num_accepted_tokens`
    and `vllm:spec_decode_num_drafts` over the measured phase).

    >>> acceptance_length(100, 128)
    2.28
    """
    drafts = _count("num_drafts", num_drafts)
    if drafts == 0:
        raise ValueError("num_drafts is 0: no verification step drafted in this phase; is "
                         "speculative decoding enabled, and did the phase decode any tokens?")
    return round(1 + _count("num_accepted", num_accepted) / drafts, 12)


def _positions(accepted_per_pos: Any) -> list[int]:
    if isinstance(accepted_per_pos, Mapping):  # {"0": n0, "1": n1, ...}, the `position` label
        try:
            keys = sorted(accepted_per_pos, key=int)
        except (TypeError, ValueError):
            raise ValueError(f"accepted_per_pos keys must be positions 0..k-1, got "
                             f"{list(accepted_per_pos)}") from None
        if [int(p) for p in keys] != list(range(len(keys))):
            raise ValueError(f"accepted_per_pos must have positions 0..k-1 with none missing, got "
                             f"{sorted(int(p) for p in keys)}")
        values = [accepted_per_pos[p] for p in keys]
    elif isinstance(accepted_per_pos, str | bytes) or not isinstance(accepted_per_pos, Iterable):
        raise ValueError(f"accepted_per_pos must be a list (or a position -> count dict) of "
                         f"accepted-token counts, got {accepted_per_pos!r}")
    else:
        values = list(accepted_per_pos)
    out = [_count(f"accepted_per_pos[{i}]", v) for i, v in enumerate(values)]
    if not out:
        raise ValueError("accepted_per_pos must hold one count per draft position (k >= 1), got none")
    return out


def rates_from_counters(num_drafts: float, accepted_per_pos: Any,
                        num_draft_tokens: float | None = None) -> dict[str, Any]:
    """Per-position acceptance from vLLM's counters over one phase (deltas of two scrapes):
    `num_drafts` = `vllm:spec_decode_num_drafts` (verification steps that carried a draft, one per
    request per step), `accepted_per_pos` = `vllm:spec_decode_num_accepted_tokens_per_pos` by its
    `position` label 0..k-1 (a list, or a dict keyed by the label). vLLM adds 1 at positions
    0..n-1 of a draft whose first n tokens were accepted, so position i counts the drafts that
    got past it: the counts can only fall with position.

    Returns `unconditional` u_i = accepted_i / drafts (what vLLM logs as "per-position acceptance
    rate"), `conditional` a_i = accepted_i / accepted_(i-1) (the a_i of
    `expected_tokens_per_step`), `conditional_stderr` (binomial, sqrt(a (1 - a) / n) over the n
    drafts that reached the position: deep positions are estimated from few drafts; inf where
    none did), `acceptance_length` (1 + accepted / drafts = `expected_tokens_per_step` of the
    conditional rates) and `num_accepted`. With `num_draft_tokens`
    (`vllm:spec_decode_num_draft_tokens`) also `draft_acceptance_rate` (accepted / drafted) and
    `full_drafts`: whether every draft had k tokens. An ngram proposer can draft fewer when its
    match runs out; then the deeper conditional rates also count drafts too short to reach the
    position and come out low.

    >>> r = rates_from_counters(100, [80, 48], num_draft_tokens=200)
    >>> r["unconditional"], r["conditional"], r["acceptance_length"], r["full_drafts"]
    ([0.8, 0.48], [0.8, 0.6], 2.28, True)
    >>> [round(s, 3) for s in r["conditional_stderr"]]   # sqrt(.8 x .2 / 100), sqrt(.6 x .4 / 80)
    [0.04, 0.055]
    """
    drafts = _count("num_drafts", num_drafts)
    if drafts == 0:
        raise ValueError("num_drafts is 0: no verification step drafted in this phase; is "
                         "speculative decoding enabled, and did the phase decode any tokens?")
    acc = _positions(accepted_per_pos)
    for i, n in enumerate(acc):
        prev = drafts if i == 0 else acc[i - 1]
        if n > prev:
            what = "num_drafts" if i == 0 else f"accepted_per_pos[{i - 1}]"
            raise ValueError(f"accepted_per_pos[{i}] = {n} exceeds {what} = {prev}: vLLM counts a "
                             "position only when every earlier one was accepted; take both counters "
                             "from the same two scrapes, and order positions by int(label), not as "
                             "strings ('10' < '2')")
    unconditional = [round(n / drafts, 12) for n in acc]
    reached = [drafts, *acc[:-1]]
    conditional = [round(n / m, 12) if m else 0.0 for n, m in zip(acc, reached, strict=True)]
    stderr = [math.sqrt(a * (1 - a) / m) if m else math.inf
              for a, m in zip(conditional, reached, strict=True)]
    out: dict[str, Any] = {
        "k": len(acc), "num_drafts": drafts, "num_accepted": sum(acc),
        "unconditional": unconditional, "conditional": conditional,
        "conditional_stderr": stderr, "acceptance_length": acceptance_length(drafts, sum(acc)),
    }
    if num_draft_tokens is not None:
        drafted = _count("num_draft_tokens", num_draft_tokens)
        if drafted > len(acc) * drafts or drafted < sum(acc):
            raise ValueError(f"num_draft_tokens = {drafted} must lie between the accepted tokens "
                             f"({sum(acc)}) and k x num_drafts ({len(acc) * drafts}); are the "
                             "counters from the same phase and k = len(accepted_per_pos)?")
        out["draft_acceptance_rate"] = round(sum(acc) / drafted, 12) if drafted else 0.0
        out["full_drafts"] = drafted == len(acc) * drafts
    return out


def significant_rise(rates: Sequence[float], stderr: Sequence[float], sigmas: float = 3.0) -> tuple[bool, float]:
    """Does acceptance rise with position by more than the sampling error says it could by
    chance? For each next position: rise - `sigmas` x sqrt(se_i^2 + se_(i+1)^2), the standard
    error of a difference of two independent estimates. Returns (ok, worst excess): ok when no
    rise exceeds its tolerance (excess <= 0). Positions no draft reached (inf error) are left out.

    >>> significant_rise([0.93, 1.0], [0.068, 0.0])   # 14 drafts: a 0.07 rise is 1 sigma
    (True, -0.134)
    >>> significant_rise([0.5, 0.9], [0.02, 0.02])[0]            # 0.4 over 0.085: a real rise
    False
    """
    r = _rates("rates", rates)
    if len(stderr) != len(r):
        raise ValueError(f"stderr needs one value per rate ({len(r)}), got {len(stderr)}")
    keep = [(a, e) for a, e in zip(r, stderr, strict=True) if math.isfinite(e)]
    excess = [b - a - _non_negative("sigmas", sigmas) * math.sqrt(ea ** 2 + eb ** 2)
              for (a, ea), (b, eb) in zip(keep, keep[1:], strict=False)]
    worst = round(max(excess, default=-math.inf), 3)
    return worst <= 0, worst


def tokens_from_counters(steps: float, num_accepted: float) -> int:
    """Tokens sampled, before a stop trims any: one per request-step that sampled (the bonus or
    corrected token, or the plain token of a step without a draft) + the accepted draft tokens.

    `steps` counts request-steps: each engine step that sampled a token for a request counts 1
    for that request. Every request's first token comes from its prefill step, which verifies
    nothing; with a draft model or EAGLE every later step verifies a draft, so steps =
    requests + `vllm:spec_decode_num_drafts`. With ngram a step whose lookup found no match
    samples one token without a draft and is not in num_drafts: count steps from the stream
    instead (one chunk per engine step per request while the client keeps up).

    >>> tokens_from_counters(steps=4 + 100, num_accepted=128)   # 4 requests, 100 drafts
    232
    """
    return _count("steps", steps) + _count("num_accepted", num_accepted)


def check_token_count(generated: float, *, steps: float, num_accepted: float, num_requests: int,
                      k: int) -> dict[str, Any]:
    """Does the accepted-token counter match the tokens produced?

    vLLM V1 counts a step's accepted drafts before it checks the stop conditions, so the identity
    is generated = steps + accepted - trimmed (`tokens_from_counters`): a request that reaches
    its `max_tokens` (or EOS) inside a step's accepted run drops the tokens past it, at most k,
    once per request. So steps + accepted - min(accepted, k x requests) <= generated <= steps +
    accepted. `generated`: output tokens of the phase (the `vllm:generation_tokens` delta, or the
    sum of `usage.completion_tokens`); run with `ignore_eos` and no stop strings (stop strings
    are cut after the engine counted). Preempted and recomputed requests sample an extra step.

    >>> c = check_token_count(230, steps=104, num_accepted=128, num_requests=4, k=3)
    >>> c["expected"], c["trimmed"], c["max_trimmed"], c["ok"]
    (232, 2, 12, True)
    """
    gen = _count("generated", generated)
    n_req = params.positive_int("num_requests", num_requests)
    k = params.positive_int("k", k)
    acc = _count("num_accepted", num_accepted)
    expected = tokens_from_counters(steps, acc)
    max_trim = min(acc, k * n_req)
    return {"generated": gen, "expected": expected, "trimmed": expected - gen,
            "max_trimmed": max_trim, "ok": expected - max_trim <= gen <= expected}


# ---- cost per step ------------------------------------------------------------------------------

def step_cost(target_verify_s: float, draft_step_s: float, k: int,
              proposer_overhead_s: float = 0.0) -> float:
    """Seconds of one speculative step: the target's step at k + 1 tokens per sequence
    (`target_verify_s`, measured at the batch size of interest) + k draft steps + the proposer's
    overhead (for ngram: draft_step_s = 0 and the overhead is the CPU lookup).

    >>> step_cost(0.011, 0.001, 3, proposer_overhead_s=0.0005)   # 11 + 3 x 1 + 0.5 ms
    0.0145
    """
    verify = params.positive_float("target_verify_s", target_verify_s)
    draft = _non_negative("draft_step_s", draft_step_s, " s")
    k = params.positive_int("k", k)
    return round(verify + k * draft + _non_negative("proposer_overhead_s", proposer_overhead_s, " s"), 15)


def predicted_tpot(target_verify_s: float, draft_step_s: float, k: int, tokens_per_step: float,
                   proposer_overhead_s: float = 0.0) -> float:
    """Seconds per output token of one sequence: `step_cost` / tokens per step (from
    `expected_tokens_per_step`, `expected_tokens_uniform` or a measured `acceptance_length`).

    >>> round(predicted_tpot(0.011, 0.001, 3, tokens_per_step=2.5) * 1e3, 3)   # 14 ms / 2.5
    5.6
    """
    cost = step_cost(target_verify_s, draft_step_s, k, proposer_overhead_s)
    return cost / _tokens_per_step(tokens_per_step, k)


def predicted_speedup(baseline_tpot_s: float, target_verify_s: float, draft_step_s: float, k: int,
                      tokens_per_step: float, proposer_overhead_s: float = 0.0) -> float:
    """baseline TPOT (the target alone, one token per step, same batch) / `predicted_tpot`.

    >>> round(predicted_speedup(0.010, 0.011, 0.001, 3, tokens_per_step=2.5), 4)   # 10 / 5.6
    1.7857
    """
    base = params.positive_float("baseline_tpot_s", baseline_tpot_s)
    return base / predicted_tpot(target_verify_s, draft_step_s, k, tokens_per_step,
                                 proposer_overhead_s)


def breakeven_length(baseline_step_s: float, target_verify_s: float, draft_step_s: float, k: int,
                     proposer_overhead_s: float = 0.0) -> float:
    """Tokens per step at which speculation only breaks even: step_cost / baseline step. Above
    k + 1 no acceptance rate can pay for the step; at or below 1 it pays even with none accepted.

    >>> round(breakeven_length(0.010, 0.011, 0.001, 3), 6)   # 14 ms of step for 10 ms per token
    1.4
    """
    base = params.positive_float("baseline_step_s", baseline_step_s)
    return step_cost(target_verify_s, draft_step_s, k, proposer_overhead_s) / base


def breakeven_acceptance(baseline_step_s: float, target_verify_s: float, draft_step_s: float,
                         k: int, proposer_overhead_s: float = 0.0) -> float | None:
    """The uniform acceptance rate at which the predicted speedup is 1: `alpha_for_length` (a
    bisection) of `breakeven_length`; None if even alpha = 1 loses (the step costs more than
    k + 1 baseline steps), 0.0 if speculation wins with nothing accepted.

    >>> round(breakeven_acceptance(0.010, 0.011, 0.001, 3), 4)   # 1 + a + a^2 + a^3 = 1.4
    0.2908
    >>> breakeven_acceptance(0.010, 0.045, 0.001, 3) is None     # 48 ms > 4 x 10 ms
    True
    """
    k = params.positive_int("k", k)
    need = breakeven_length(baseline_step_s, target_verify_s, draft_step_s, k, proposer_overhead_s)
    if need > k + 1:
        return None
    if need <= 1.0:
        return 0.0
    return alpha_for_length(need, k)


def sweep_table(baseline_step_s: float, target_verify_s: Mapping[int, float], draft_step_s: float,
                *, alphas: Sequence[float] | None = None, lengths: Sequence[float] | None = None,
                proposer_overhead_s: float = 0.0) -> list[dict[str, Any]]:
    """Predicted speedup over a grid, one row (dict) per (k, acceptance) for a DataFrame or a plot.

    `target_verify_s` maps each k to the measured target step with k + 1 tokens per sequence (the
    k of the sweep are its keys); `baseline_step_s` is the target's plain decode step at the same
    batch. Give the acceptance grid as uniform rates (`alphas`: tokens per step then grow with k,
    as for a given drafter) or as acceptance lengths (`lengths`: tokens per step fixed; lengths
    above k + 1 are impossible at that k and skipped). Each row: k, alpha, tokens_per_step,
    step_s, tpot_s, speedup, and breakeven_alpha of that k (None: never pays).

    >>> rows = sweep_table(0.010, {1: 0.0105, 3: 0.0115}, 0.001, alphas=[0.5, 0.8])
    >>> [(r["k"], r["alpha"], r["tokens_per_step"], round(r["speedup"], 3)) for r in rows]
    [(1, 0.5, 1.5, 1.304), (1, 0.8, 1.8, 1.565), (3, 0.5, 1.875, 1.293), (3, 0.8, 2.952, 2.036)]
    """
    if (alphas is None) == (lengths is None):
        raise ValueError("sweep_table needs exactly one grid: alphas=[...] (uniform acceptance "
                         "rates) or lengths=[...] (tokens per step)")
    if not isinstance(target_verify_s, Mapping) or not target_verify_s:
        raise ValueError(f"target_verify_s must map each k to its measured verify step in seconds, "
                         f"e.g. {{1: 0.0105, 3: 0.0115}}, got {target_verify_s!r}")
    grid = list(alphas if alphas is not None else lengths)
    if not grid:
        raise ValueError("the acceptance grid (alphas or lengths) is empty")
    rows: list[dict[str, Any]] = []
    for k in sorted(target_verify_s):
        params.positive_int("target_verify_s key k", k)
        verify = target_verify_s[k]
        params.positive_float(f"target_verify_s[{k}]", verify)
        cost = step_cost(verify, draft_step_s, k, proposer_overhead_s)
        even = breakeven_acceptance(baseline_step_s, verify, draft_step_s, k, proposer_overhead_s)
        for value in grid:
            if alphas is not None:
                alpha, tokens = _probability("alphas item", value), expected_tokens_uniform(value, k)
            else:
                tokens = _number("lengths item", value)
                if tokens < 1:
                    raise ValueError(f"lengths item must be >= 1 token per step, got {value!r}")
                if tokens > k + 1:
                    continue  # impossible at this k: a step emits at most k + 1 tokens
                alpha = alpha_for_length(tokens, k)
            tpot = predicted_tpot(verify, draft_step_s, k, tokens, proposer_overhead_s)
            rows.append({"k": k, "alpha": alpha, "tokens_per_step": tokens, "step_s": cost,
                         "tpot_s": tpot, "speedup": baseline_step_s / tpot,
                         "breakeven_alpha": even})
    return rows


# ---- measured runs: summary, the verify step, the prediction ----------------------------------

def run_summary(run: dict[str, Any]) -> dict[str, Any]:
    """One run of `experiments.spec_run` (a workload at one batch: its requests and the counters'
    change over them) in the figures lab 10 compares: tokens, the engine-timed decode time and
    decode tokens (first token excluded: it comes from the prefill step), TPOT = decode time /
    decode tokens (with requests from several `repeat`s: the median of the repeats' TPOTs, and
    `tpot_repeats` lists them), tokens per request-step (1 without speculation) and, where drafts were made,
    the acceptance (`rates_from_counters`) and at batch 1 the token identity
    (`check_token_count`: at batch 1 an engine step is one request-step).

    >>> reqs = [{"n_out": 33, "decode": 0.16}, {"n_out": 17, "decode": 0.08}]
    >>> c = {"num_drafts": 12, "num_draft_tokens": 48, "num_accepted_tokens": 30,
    ...      "accepted_per_pos": [10, 8, 7, 5], "steps": 20, "generated": 50}
    >>> r = run_summary({"batch": 1, "requests": reqs, "counters": c})
    >>> r["tpot_s"], r["tokens_per_step"], r["acceptance"]["acceptance_length"], r["identity"]["ok"]
    (0.005, 2.5, 3.5, True)
    >>> reqs = [{"n_out": 11, "decode": d, "repeat": i} for i, d in enumerate((0.1, 0.5, 0.12))]
    >>> r = run_summary({"batch": 1, "requests": reqs, "counters": {}})
    >>> [round(t, 4) for t in (r["tpot_s"], *r["tpot_repeats"])]  # a repeat that compiled a kernel moves nothing
    [0.012, 0.01, 0.05, 0.012]
    """
    reqs, c, batch = run["requests"], run["counters"], run.get("batch", 1)
    if not reqs:
        raise ValueError("run_summary needs a run with at least one request")
    tokens = sum(r["n_out"] for r in reqs)
    dec_tokens = sum(r["n_out"] - 1 for r in reqs)
    dec_s = sum(r["decode"] for r in reqs)
    drafts = c.get("num_drafts") or 0
    accepted = c.get("num_accepted_tokens") or 0
    by_repeat: dict[Any, list[float]] = {}
    for r in reqs:
        d = by_repeat.setdefault(r.get("repeat", 0), [0.0, 0.0])
        d[0], d[1] = d[0] + r["decode"], d[1] + r["n_out"] - 1
    per_repeat = [d / n for d, n in by_repeat.values() if n]
    out: dict[str, Any] = {"batch": batch, "requests": len(reqs), "tokens": tokens, "decode_s": dec_s,
                           "decode_tokens": dec_tokens,
                           "tpot_s": statistics.median(per_repeat) if per_repeat else None,
                           "tpot_repeats": per_repeat,
                           "drafts": drafts, "accepted": accepted, "steps": c.get("steps"),
                           "tokens_per_step": tokens / (tokens - accepted), "acceptance": None, "identity": None}
    if drafts:
        out["acceptance"] = rates_from_counters(drafts, c["accepted_per_pos"], c.get("num_draft_tokens"))
        if batch == 1 and c.get("steps") is not None:
            out["identity"] = check_token_count(tokens, steps=c["steps"], num_accepted=accepted,
                                                num_requests=len(reqs), k=out["acceptance"]["k"])
    return out


def verify_step_seconds(spec: dict[str, Any], plain_step_s: float) -> float:
    """The cost of one decode step that verifies a draft, from a speculative batch-1 run
    (`run_summary`) whose plain steps cost `plain_step_s` (the same workload's TPOT without
    speculation): decode time = (decode steps - drafted steps) x plain + drafted x verify, with
    decode steps = engine steps - requests (each request's first step is its prefill).

    >>> round(verify_step_seconds({"decode_s": 1.0, "steps": 60, "requests": 4, "drafts": 40}, 0.02), 6)
    0.017
    """
    d = _count("drafts", spec["drafts"])
    if d == 0:
        raise ValueError("the run drafted nothing: its verify step cannot be measured (use a "
                         "workload the proposer can draft for, e.g. a copy of the prompt)")
    plain = spec["steps"] - spec["requests"] - d
    return (spec["decode_s"] - plain * _non_negative("plain_step_s", plain_step_s)) / d


def predicted_decode_tpot(spec: dict[str, Any], plain_step_s: float, verify_s: float) -> float:
    """TPOT the two step costs predict for a speculative batch-1 run from its own counters:
    ((decode steps - drafted) x plain + drafted x verify) / decode tokens.

    >>> round(predicted_decode_tpot({"steps": 30, "requests": 2, "drafts": 20, "decode_tokens": 80},
    ...                             0.02, 0.025), 6)   # (8 x 20 + 20 x 25) ms / 80
    0.00825
    """
    plain = spec["steps"] - spec["requests"] - spec["drafts"]
    return (plain * plain_step_s + spec["drafts"] * verify_s) / spec["decode_tokens"]


# ---- streaming: per chunk vs per token ----------------------------------------------------------

def _stream_gaps(chunk_times: Any, chunk_sizes: Any, where: str) -> tuple[list[float], list[float]]:
    times = [_number(f"chunk_times[{i}]{where}", t) for i, t in enumerate(chunk_times)]
    sizes = [params.positive_int(f"chunk_sizes[{i}]{where}", n) for i, n in enumerate(chunk_sizes)]
    if len(times) != len(sizes):
        raise ValueError(f"chunk_times and chunk_sizes{where} must have one entry per chunk, got "
                         f"{len(times)} times and {len(sizes)} sizes")
    if not times:
        raise ValueError(f"the stream{where} has no chunks")
    for i in range(1, len(times)):
        if times[i] < times[i - 1]:
            raise ValueError(f"chunk_times{where} must not decrease (arrival times of one stream), "
                             f"but [{i}] = {times[i]} < [{i - 1}] = {times[i - 1]}")
    per_chunk = [b - a for a, b in zip(times, times[1:], strict=False)]
    per_token = [0.0] * (sizes[0] - 1)  # the first chunk's tokens arrived together
    for gap, n in zip(per_chunk, sizes[1:], strict=True):
        per_token += [gap / n] * n
    return per_chunk, per_token


def pooled_itl(streams: Iterable[tuple[Sequence[float], Sequence[int]]]) -> dict[str, Any]:
    """Inter-token latency two ways, pooled over streams of (chunk_times, chunk_sizes): arrival
    time (s) of each token-bearing chunk and the tokens it carried (`client.RequestResult`'s
    `chunk_times` and `chunk_tokens`).

    - per_chunk: the gap between consecutive chunks, one per chunk after the first.
    - per_token: a chunk of n tokens after a gap g counts as n tokens of g / n each; the first
      chunk's n tokens add n - 1 gaps of 0. Same definition as `client.RequestResult.itl`, so the
      numbers match: one gap per token after the first, and they sum to last - first arrival.

    Under speculative decoding a chunk holds 1 to k + 1 tokens: per_token gaps are shorter and
    steadier than per_chunk ones (the mean falls by the tokens per chunk), while the reader sees
    text arrive in bursts of per_chunk spacing. Without speculation (one token per chunk) the two
    agree. Returns "per_chunk" and "per_token" as `timing.Summary` (p50, p99, n, ...), the gap
    lists ("per_chunk_gaps", "per_token_gaps"), "tokens", "chunks" and "tokens_per_chunk".

    >>> r = pooled_itl([([0.10, 0.13, 0.16], [1, 3, 1])])
    >>> [round(g, 3) for g in r["per_chunk_gaps"]], [round(g, 3) for g in r["per_token_gaps"]]
    ([0.03, 0.03], [0.01, 0.01, 0.01, 0.03])
    >>> round(r["per_chunk"].p50, 3), round(r["per_token"].p50, 3), r["tokens_per_chunk"]
    (0.03, 0.01, 1.6666666667)
    """
    per_chunk: list[float] = []
    per_token: list[float] = []
    tokens = chunks = 0
    for i, stream in enumerate(streams):
        try:
            times, sizes = stream
        except (TypeError, ValueError):
            raise ValueError(f"streams[{i}] must be a pair (chunk_times, chunk_sizes), got "
                             f"{stream!r}") from None
        c, t = _stream_gaps(times, sizes, f" of streams[{i}]")
        per_chunk += c
        per_token += t
        tokens += sum(sizes)
        chunks += len(sizes)
    if not per_chunk:
        raise ValueError("no inter-chunk gap to summarize: every stream needs two chunks or more "
                         "(ask for more output tokens)")
    return {"per_chunk": timing.summarize(per_chunk), "per_token": timing.summarize(per_token),
            "per_chunk_gaps": per_chunk, "per_token_gaps": per_token,
            "tokens": tokens, "chunks": chunks, "tokens_per_chunk": round(tokens / chunks, 10)}


# ---- published anchors --------------------------------------------------------------------------

@dataclass(frozen=True)
class Anchor:
    """A speedup someone else published, with its conditions: printed beside a measurement,
    never passed off as one (`status` is always "published")."""

    name: str
    speedup: float  # > 1 faster than the target alone, < 1 slower
    quoted: str  # the claim as its source words it
    conditions: str
    source: str
    url: str
    status: str = "published"


_VLLM_BLOG = ("vLLM blog, 'How Speculative Decoding Boosts vLLM Performance by up to 2.8x' "
              "(2024-10-17; vLLM V0; vllm issue 10318 reports it hard to reproduce)")
_VLLM_BLOG_URL = "https://blog.vllm.ai/2024/10/17/spec-decode.html"
_EAGLE3 = "Li et al., 'EAGLE-3: Scaling up Inference Acceleration of LLMs via Training-Time Test' (2025)"
_EAGLE3_URL = "https://arxiv.org/abs/2503.01840"

PUBLISHED: tuple[Anchor, ...] = (
    Anchor("ngram, low load", 2.8, "up to 2.8x",
           "Llama3-70B on 4x H100, CNN/DailyMail summarization, QPS 1", _VLLM_BLOG, _VLLM_BLOG_URL),
    Anchor("draft model, low load", 1.5, "up to 1.5x",
           "Llama3-70B on 4x H100, ShareGPT, QPS 1, draft turboderp/Qwama-0.5B-Instruct",
           _VLLM_BLOG, _VLLM_BLOG_URL),
    Anchor("draft model, high load", 1 / 1.4, "1.4x slowdown",
           "Llama3-70B on 4x H100, ShareGPT, high QPS", _VLLM_BLOG, _VLLM_BLOG_URL),
    Anchor("ngram, high load", 1 / 1.8, "1.8x slowdown",
           "Llama3-70B on 4x H100, CNN/DailyMail, high QPS", _VLLM_BLOG, _VLLM_BLOG_URL),
    Anchor("EAGLE-3, batch 1", 4.4, "4.4x",
           "an 8B model at batch 1 with trained EAGLE-3 heads (as recorded in the project's "
           "notes/anchors.md; the paper's abstract: up to 6.5x across its models)",
           _EAGLE3, _EAGLE3_URL),
    Anchor("EAGLE-3, batch 64", 1.38, "1.38x throughput",
           "in SGLang at batch size 64 (the paper's abstract)", _EAGLE3, _EAGLE3_URL),
)
