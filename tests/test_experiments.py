import pytest

from labs_lib import experiments
from labs_lib.tiers import CPU


def test_unknown_experiment_is_rejected_before_starting_anything():
    with pytest.raises(ValueError, match="unknown experiment 'nope'; known: \\['vllm_sweep'"):
        experiments.run_isolated("nope")


def test_worker_failure_reports_exit_code_and_log_tail():
    with pytest.raises(RuntimeError, match=r"(?s)vllm_sweep failed \(exit 1\).*unknown model 'no-such-model'"):
        experiments.run_isolated("vllm_sweep", model="no-such-model", profile=CPU.to_dict(),
                                workloads={}, engine={})


def test_a_worker_past_its_timeout_is_stopped_and_retried(capsys):
    # 50 ms is far less than a Python start: every attempt times out
    with pytest.raises(experiments.WorkerTimeout, match=r"vllm_sweep did not finish in 0.05 s; log .*vllm_sweep-"):
        experiments.run_isolated("vllm_sweep", timeout=0.05, retries=1, model="tiny-llama", profile=CPU.to_dict(),
                                 workloads={}, engine={})
    assert capsys.readouterr().out.count("starting it again (retry 1 of 1)") == 1
