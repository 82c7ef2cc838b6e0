import pytest

from labs_lib import experiments
from labs_lib.tiers import CPU


def test_unknown_experiment_is_rejected_before_starting_anything():
    with pytest.raises(ValueError, match="unknown experiment 'nope'; known: \\['vllm_batch'"):
        experiments.run_isolated("nope")


def test_worker_failure_reports_exit_code_and_log_tail():
    with pytest.raises(RuntimeError, match=r"(?s)vllm_batch failed \(exit 1\).*unknown model 'no-such-model'"):
        experiments.run_isolated("vllm_batch", model="no-such-model", profile=CPU.to_dict(),
                                prompts=[[1, 2]], out_lens=[2])
