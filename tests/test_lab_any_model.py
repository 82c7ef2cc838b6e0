"""A lab runs with the user's own model: a local directory holding only a config.json."""

import json
import subprocess
import sys

import pytest

from labs_lib import models, records


@pytest.mark.slow
def test_lab_03_runs_with_a_local_model_directory(tmp_path):
    """The any-model promise, end to end on the CPU tier: lab 03 (capacity checked exactly
    against the engine, preemption shown on a KV budget the lab sets itself) with
    `model=<a directory with a config.json>`, through the runner as a user would call it."""
    mine = tmp_path / "my model"  # a space in the name: file names made from it must be safe
    mine.mkdir()
    (mine / "config.json").write_text(json.dumps(models.TINY_CONFIG))
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "labs_lib.runner", "--out", str(out), "--only", "03",
                        "-p", f"model={mine}", "-p", "overload_seq_len=512"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    df = records.load(out / "records.jsonl")
    lab = df[df["lab"] == "03"]
    assert set(lab["params.model"].dropna()) == {str(mine)}
    checks = lab[lab["name"] == "check"]
    assert len(checks) >= 3 and checks["value"].all()
    pre = lab[(lab["name"] == "preemption_phase") & (lab["phase"] == "overload")]
    assert pre["value"].iloc[-1] > 0
    assert any(f.name.startswith("vllm-my_model-") for f in (out / "logs").iterdir())
