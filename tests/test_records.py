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


# -- bad lines, file modes, unwritable folders (issue 9)

GOOD = '{"lab": "01", "name": "a", "value": 1, "unit": "s"}'


def test_load_skips_truncated_and_non_json_lines_keeps_good_ones_and_names_them(tmp_path):
    p = tmp_path / "records.jsonl"
    p.write_text("\n".join([GOOD, '{"lab": "01", "name": "b", "val', "not json at all", "[1, 2]",
                            "null", "", GOOD.replace('"a"', '"c"'), '{"lab": "01", "na']))
    with pytest.warns(records.BadRecordsWarning) as warned:
        df = records.load(p)
    assert df["name"].tolist() == ["a", "c"]
    (w,) = warned
    msg = str(w.message)
    assert str(p) in msg and "line 2, 3, 4, 5, 8" in msg and "kept the other 2 records" in msg


def test_load_warns_once_per_file_and_bad_lines(tmp_path):
    import warnings

    p = tmp_path / "records.jsonl"
    p.write_text(GOOD + "\n{oops\n")
    with pytest.warns(records.BadRecordsWarning):
        records.load(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(records.load(p)) == 1  # same file, same lines: no second warning


def test_load_of_only_bad_lines_is_empty_not_an_error(tmp_path):
    p = tmp_path / "records.jsonl"
    p.write_text("{trunc")
    with pytest.warns(records.BadRecordsWarning):
        assert records.load(p).empty


def test_append_after_a_truncated_last_line_keeps_the_new_record(tmp_path):
    p = tmp_path / "records.jsonl"
    p.write_text(GOOD + "\n" + '{"lab": "01", "name": "cut sh')  # a crash mid-write, no newline
    records.append({"lab": "01", "name": "next", "value": 2, "unit": "s"}, p)
    with pytest.warns(records.BadRecordsWarning, match="line 2"):
        assert records.load(p)["name"].tolist() == ["a", "next"]


def test_records_and_tables_are_readable_by_others_under_the_umask(tmp_path, monkeypatch):
    import os
    import stat

    import pandas as pd

    monkeypatch.setenv("LABS_RUN_DIR", str(tmp_path / "run"))
    old = os.umask(0o022)
    try:
        p = records.append({"lab": "01", "name": "a", "value": 1, "unit": "s"})
        t = records.save_table(pd.DataFrame({"x": [1]}), "per_request")
        os.umask(0o077)
        q = records.append({"lab": "01", "name": "a", "value": 1, "unit": "s"}, tmp_path / "q.jsonl")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert stat.S_IMODE(t.stat().st_mode) == 0o644
    assert stat.S_IMODE(q.stat().st_mode) == 0o600  # a stricter umask is respected


def test_append_into_an_unwritable_place_names_the_path_and_the_fix(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = blocker / "sub" / "records.jsonl"
    with pytest.raises(records.RecordsWriteError) as err:
        records.append({"lab": "01", "name": "a", "value": 1, "unit": "s"}, target)
    assert str(target) in str(err.value) and "LABS_RUN_DIR" in str(err.value)


def test_recorder_marks_records_taken_on_a_busy_machine(tmp_path, monkeypatch):
    from labs_lib import contention

    rec = records.Recorder("01", path=tmp_path / "r.jsonl")
    monkeypatch.setattr(contention, "cached", lambda: contention.State(True, ["load average 9.0 on 2 cores"]))
    busy = rec.write("ttft_p50", 5.4, "s")
    monkeypatch.setattr(contention, "cached", lambda: contention.State(False))
    calm = rec.write("ttft_p50", 0.2, "s")
    assert (busy["busy"], busy["busy_reason"]) == (True, "load average 9.0 on 2 cores")
    assert calm["busy"] is False and "busy_reason" not in calm
    assert rec.frame()["busy"].tolist() == [True, False]


# -- appends without rewriting; the commit on every record (issue 12)


def test_appends_add_one_line_each_and_never_rewrite_earlier_bytes(tmp_path):
    p = tmp_path / "r.jsonl"
    rec = records.Recorder("01", path=p)
    rec.write("first", 1, "s")
    before, inode = p.read_bytes(), p.stat().st_ino
    for i in range(20):
        rec.write("more", i, "s")
    after = p.read_bytes()
    assert p.stat().st_ino == inode  # the same file, not a copy renamed over it
    assert after.startswith(before) and after.count(b"\n") == 21
    assert [json.loads(line)["value"] for line in after.splitlines()[1:]] == list(range(20))
    assert not list(tmp_path.glob(".records-*")) and not list(tmp_path.glob("*.lock"))


@pytest.fixture
def fresh_commit():
    records.commit.cache_clear()  # commit() is computed once per process: start and end clean
    yield
    records.commit.cache_clear()


def test_every_record_carries_labs_commit_when_it_is_set(tmp_path, monkeypatch, fresh_commit):
    monkeypatch.setenv("LABS_COMMIT", "9d1e0f2")
    monkeypatch.setattr(records, "git_commit", lambda root: pytest.fail("asked git despite LABS_COMMIT"))
    p = tmp_path / "r.jsonl"
    records.Recorder("01", path=p).write("ttft_p50", 0.2, "s")
    records.append({"lab": "01", "name": "plain", "value": 1, "unit": "s"}, p)
    assert [json.loads(line)["commit"] for line in p.read_text().splitlines()] == ["9d1e0f2"] * 2


def test_commit_is_none_without_git(tmp_path, monkeypatch, fresh_commit):
    monkeypatch.delenv("LABS_COMMIT", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable to be found
    p = records.append({"lab": "01", "name": "a", "value": 1, "unit": "s"}, tmp_path / "r.jsonl")
    assert json.loads(p.read_text())["commit"] is None


def test_commit_is_asked_once_per_process(monkeypatch, fresh_commit):
    calls = []
    monkeypatch.delenv("LABS_COMMIT", raising=False)
    monkeypatch.setattr(records, "git_commit", lambda root: calls.append(root) or "abc1234")
    assert [records.commit() for _ in range(3)] == ["abc1234"] * 3
    assert calls == [records.REPO_ROOT]


def test_git_commit_of_a_checkout_is_its_short_head_and_dirty_only_for_tracked_changes(tmp_path):
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                               *args], capture_output=True, text=True, check=True).stdout.strip()

    assert records.git_commit(tmp_path) is None  # not a checkout (yet)
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "--short", "HEAD")
    assert records.git_commit(tmp_path) == head
    (tmp_path / "notes.txt").write_text("untracked files do not make a checkout dirty")
    assert records.git_commit(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert records.git_commit(tmp_path) == head + "+dirty"
    (tmp_path / "sub").mkdir()
    assert records.git_commit(tmp_path / "sub") is None  # inside a checkout, not its top level
