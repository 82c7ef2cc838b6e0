import json
import multiprocessing as mp

import numpy as np
import pytest

from labs_lib import records


def test_run_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LABS_RUN_DIR", str(tmp_path / "x"))
    assert records.run_dir() == tmp_path / "x" and (tmp_path / "x").is_dir()
    assert records.records_path() == tmp_path / "x" / "records.jsonl"
    assert records.figures_dir().parent == tmp_path / "x"


def test_append_load_roundtrip_with_numpy_and_nan(tmp_path):
    p = tmp_path / "r.jsonl"
    records.append({"lab": "00", "name": "a", "value": np.float32(1.5), "unit": "s",
                    "params": {"n": np.int64(3)}, "bad": float("nan")}, p)
    records.append({"lab": "00", "name": "b", "value": 2, "unit": "s"}, p)
    lines = p.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["bad"] is None
    df = records.load(p)
    assert df["name"].tolist() == ["a", "b"] and df.loc[0, "params.n"] == 3


def test_append_rejects_records_without_lab_or_name(tmp_path):
    with pytest.raises(ValueError, match="'lab'"):
        records.append({"name": "x"}, tmp_path / "r.jsonl")
    with pytest.raises(ValueError, match="must be a dict"):
        records.append(["x"], tmp_path / "r.jsonl")


def _writer(path, k):
    for i in range(25):
        records.append({"lab": "t", "name": f"w{k}", "value": i, "unit": "n"}, path)


def test_concurrent_appends_lose_nothing(tmp_path):
    p = tmp_path / "r.jsonl"
    procs = [mp.get_context("fork").Process(target=_writer, args=(p, k)) for k in range(4)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join()
    rows = [json.loads(line) for line in p.read_text().splitlines()]
    assert len(rows) == 100
    assert not list(tmp_path.glob(".records-*"))  # no temp files left behind


def test_recorder_headline_and_frame(tmp_path):
    rec = records.Recorder("07", fingerprint={"gpu_name": "x"}, params={"k": 1},
                           path=tmp_path / "r.jsonl")
    rec.write("tput", 10.0, "tok/s", batch=8)
    rec.headline("10 tok/s")
    records.append({"lab": "08", "name": "other", "value": 1, "unit": "x"}, tmp_path / "r.jsonl")
    df = rec.frame()
    assert set(df["lab"]) == {"07"} and df["name"].tolist() == ["tput", "headline"]
    assert df.loc[0, "fingerprint.gpu_name"] == "x"


def test_load_missing_file_is_empty(tmp_path):
    assert records.load(tmp_path / "none.jsonl").empty
