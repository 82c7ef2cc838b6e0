"""Static vs continuous batching as step schedules: how many sequences each decode step carries.

All requests arrive at t = 0; request i wants `out_lens[i]` tokens. A step gives every running
sequence one token (a sequence's first token comes with its prefill step).

* **static** batches of `batch` in arrival order: a batch starts only when the previous one has
  fully finished, and runs `max(out_lens of the batch)` steps; a finished sequence leaves its slot
  idle until the batch ends (vLLM computes nothing for it; `generate` with padding would).
* **continuous** with `max_num_seqs` slots: whenever a sequence finishes, the next waiting request
  takes its slot at the next step.

`idle_fraction` is the share of static slot-steps that carry no useful token: if a step cost the
same whatever its occupancy and continuous batching kept every slot busy, continuous / static
throughput would be 1 / (1 - idle); the continuous schedule's own tail (the last long requests
running almost alone) takes some of that back. `predict_seconds` prices each schedule with a
step-cost line
`seconds(step) = fixed + per_seq * active` measured on the engine (`step_cost`), which covers the
bandwidth-bound case (per_seq ~ 0: a step costs the same) and a compute-bound CPU alike.

>>> out = [4, 1, 1, 1]
>>> static_schedule(out, 2), continuous_schedule(out, 2)
([2, 1, 1, 1, 2], [2, 2, 2, 1])
>>> round(idle_fraction(out, 2), 3)  # 7 useful tokens in 2 x (4 + 1) = 10 slot-steps
0.3
"""

from __future__ import annotations

from collections.abc import Sequence

from . import params


def static_schedule(out_lens: Sequence[int], batch: int) -> list[int]:
    """Active sequences per step under static batches of `batch` (arrival order).

    >>> static_schedule([3, 1, 2], 2)  # batch 1: [3, 1] -> 2, 1, 1; batch 2: [2] -> 1, 1
    [2, 1, 1, 1, 1]
    """
    _check(out_lens, batch, "batch")
    steps: list[int] = []
    for i in range(0, len(out_lens), batch):
        chunk = out_lens[i:i + batch]
        steps += [sum(n > s for n in chunk) for s in range(max(chunk))]
    return steps


def continuous_schedule(out_lens: Sequence[int], max_num_seqs: int) -> list[int]:
    """Active sequences per step when a finished sequence's slot is refilled at the next step.

    >>> continuous_schedule([3, 1, 2], 2)  # step 1: r0, r1; step 2: r0, r2; step 3: r0, r2
    [2, 2, 2]
    """
    _check(out_lens, max_num_seqs, "max_num_seqs")
    waiting = list(out_lens)[::-1]
    running: list[int] = []
    steps: list[int] = []
    while waiting or running:
        while waiting and len(running) < max_num_seqs:
            running.append(waiting.pop())
        steps.append(len(running))
        running = [n - 1 for n in running if n > 1]
    return steps


def idle_fraction(out_lens: Sequence[int], batch: int) -> float:
    """Share of static batching's slot-steps (batch x steps of each batch) that produce nothing.

    >>> idle_fraction([2, 2], 2), round(idle_fraction([3, 1, 1, 1], 2), 3)  # 6 of 2 x (3 + 1)
    (0.0, 0.25)
    """
    _check(out_lens, batch, "batch")
    slots = sum(batch * max(out_lens[i:i + batch]) for i in range(0, len(out_lens), batch))
    return 1 - sum(out_lens) / slots


def predict_seconds(schedule: Sequence[int], fixed: float, per_seq: float) -> float:
    """Decode time of a schedule with a step cost of `fixed + per_seq * active`.

    >>> predict_seconds([2, 1], fixed=0.01, per_seq=0.001)
    0.023
    """
    return round(sum(fixed + per_seq * a for a in schedule), 12)


def step_cost(t_small: float, b_small: int, t_large: float, b_large: int) -> tuple[float, float]:
    """The line through two measured step times: (fixed, per_seq) seconds.

    >>> step_cost(0.010, 1, 0.017, 8)  # 1 ms more per sequence on top of 9 ms
    (0.009, 0.001)
    """
    if b_large <= b_small:
        raise ValueError(f"b_large ({b_large}) must exceed b_small ({b_small})")
    per_seq = max(0.0, (t_large - t_small) / (b_large - b_small))
    return round(t_small - per_seq * b_small, 12), round(per_seq, 12)


def _check(out_lens: Sequence[int], n: int, name: str) -> None:
    params.positive_int(name, n)
    if not out_lens or min(out_lens) < 1:
        raise ValueError(f"out_lens must be a non-empty list of positive token counts, got {list(out_lens)[:8]}")
