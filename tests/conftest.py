import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_run_dir(tmp_path, monkeypatch):
    """Every test writes records/figures into its own folder, never into runs/."""
    monkeypatch.setenv("LABS_RUN_DIR", str(tmp_path / "run"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
