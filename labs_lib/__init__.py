"""labs_lib: the shared library of the perf-labs notebooks.

Modules, by role:
- params    fail-fast checks of parameters (ValueError naming the parameter and allowed values)
- tiers     the tier, device and dtype a run targets (decided once), default model, KV plan
- hardware  fingerprint, published GPU peaks, bandwidth / matmul microbenchmarks
- timing    synchronized timers with warm-up and repeats; percentile summaries with a bootstrap CI
- models    model registry (shape-only, tiny, packaged, hub) and parameter / weight-byte arithmetic
- procs     subprocesses that never outlive their owner (servers)
- engine    vLLM in-process (`offline_llm`) or as an OpenAI-compatible server (`vllm_server`)
- records   JSON-lines results, written atomically; where a run's files go
- plots     one style; the roofline
- checks    the laws a lab states, printed PASS/FAIL, recorded, asserted
- runner    `python -m labs_lib.runner`: execute every notebook into runs/<timestamp>/
- nbparams  a notebook's `parameters` cell read with `ast`; `-p name=value` checked and typed
- contention  is the machine busy with other work? (records of such runs are flagged)
- batching    static vs continuous batching schedules: steps, idle slots, predicted time
- speculative speculative decoding as arithmetic: tokens per step, cost per step, break-even
"""

from __future__ import annotations

import logging
import random

# torchao (installed for lab 07) is imported by transformers whenever it is present and logs a
# warning per prebuilt CUDA extension it cannot load on this machine, plus torch's deprecation
# notes for its enums: noise in every notebook that imports transformers. Errors still show.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

__version__ = "0.1.0"


def setup(seed: int = 0) -> dict[str, str]:
    """Seed every RNG, set the plot style and pandas display; return the run folder. Warns
    (stderr, shown in the notebook) when the machine is busy with other work.

    The tier is not decided here: each notebook decides it once from its `profile` parameter
    (`labs_lib.tiers.resolve`).

    >>> info = setup()
    >>> sorted(info)
    ['run_dir']
    """
    import numpy as np
    import pandas as pd

    from . import plots, records

    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.precision", 4)
    plots.style()
    from . import contention

    state = contention.warn_if_busy()  # printed in the notebook: timings taken now would be flagged
    contention.fit_threads(state)  # no more threads than free cores: a waiting thread stalls them all
    return {"run_dir": str(records.run_dir())}
