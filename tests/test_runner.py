import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from labs_lib import records, runner


def _nb(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_run_one_reports_ok_with_headline_and_failure_with_cell(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    ok = _nb(tmp_path / "91_ok.ipynb",
             "from labs_lib import records\n"
             f"records.Recorder('91', path={str(out / 'records.jsonl')!r}).headline('42 tok/s')")
    bad = _nb(tmp_path / "92_bad.ipynb", "x = 1", "raise ValueError('bad parameter n=0')")
    r_ok = runner.run_one(ok, out, {})
    r_bad = runner.run_one(bad, out, {})
    assert (r_ok.status, r_ok.headline) == ("ok", "42 tok/s")
    assert r_bad.status == "failed" and "ValueError: bad parameter n=0" in r_bad.error
    table = runner.summary_table([r_ok, r_bad])
    assert "| 91_ok | ok |" in table and "| 92_bad | failed |" in table
    assert (out / "92_bad.ipynb").exists()  # the executed copy is kept, with its traceback
    assert (out / "logs" / "92_bad.stderr.log").exists()  # kernel noise goes to a log, not the table
    assert records.load(out / "records.jsonl")["value"].tolist() == ["42 tok/s"]


def test_discover_finds_numbered_notebooks_in_order():
    found = [p.stem for p in runner.discover()]
    assert found == sorted(found) and found[0].startswith("00_")
    assert [p.stem for p in runner.discover(["00"])] == [found[0]]
    with pytest.raises(SystemExit, match="matched no notebook"):
        runner.discover(["99"])


def test_parse_params_rejects_malformed():
    with pytest.raises(SystemExit, match="name=value"):
        runner.parse_params(["oops"])


# -- bad input and faults (issue 9): everything fails before work starts, with one clear line

PARAMS = ('n: int = 4  # requests; 0 = sized by profile, max(n, 4 x c)\n'
          'fast: bool = False  # "quick" mode = fewer points\n'
          'sizes: list = []  # [] = [1, 2, 4]\n'
          'rate: float = 0.5\n'
          'label: str = "x=y"  # any text\n')


def _lab(path, params, *sources):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell] + [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def labs(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir()
    _lab(d / "01_demo.ipynb", PARAMS)
    _lab(d / "02_other.ipynb", "seed: int = 0\n")
    return d


def _main_error(*argv) -> str:
    with pytest.raises(SystemExit) as err:
        runner.main(list(argv))
    assert isinstance(err.value.code, str), err.value.code
    return err.value.code


def test_unknown_parameter_fails_before_the_run_folder_exists(labs, tmp_path):
    out = tmp_path / "run-x"
    msg = _main_error("--out", str(out), "--notebooks", str(labs), "--only", "01",
                      "-p", "batch_sizes=[1]")
    assert msg == ("-p batch_sizes=[1]: 01_demo has no parameter 'batch_sizes' (did you mean "
                   "sizes?); its parameters: n, fast, sizes, rate, label")
    assert not out.exists()


def test_unknown_parameter_among_several_notebooks_lists_all_known_names(labs, tmp_path):
    msg = _main_error("--out", str(tmp_path / "o"), "--notebooks", str(labs), "-p", "sise=[1]")
    assert msg == ("-p sise=[1]: none of the selected notebooks (01_demo, 02_other) has a "
                   "parameter 'sise' (did you mean sizes?); known parameters: fast, label, n, "
                   "rate, seed, sizes")


@pytest.mark.parametrize("item, value", [
    ("fast=False", False), ("fast=false", False), ("fast=0", False), ("fast=No", False),
    ("fast=TRUE", True), ("fast=1", True), ("fast=yes", True),
    ("n=3", 3), ("n=-2", -2), ("rate=2", 2.0), ("rate=1e-3", 0.001),
    ("sizes=[1, 2, 4]", [1, 2, 4]), ("sizes=[[16, 256], [256, 16]]", [[16, 256], [256, 16]]),
    ("sizes=['a', 'b']", ["a", "b"]), ("label=3", "3"), ("label=", ""), ("label=a=b", "a=b"),
])
def test_values_are_converted_to_the_declared_type(labs, item, value):
    plan = runner.check_params([labs / "01_demo.ipynb"], runner.parse_params([item]))
    (got,) = plan.per_notebook["01_demo"].values()
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("item, message", [
    ("fast=maybe", "-p fast=maybe: fast is a bool in 01_demo; use true or false (also 1/0, yes/no)"),
    ("fast=", "-p fast=: fast is a bool in 01_demo; use true or false (also 1/0, yes/no)"),
    ("n=3.5", "-p n=3.5: n is an int in 01_demo; give a whole number such as 4"),
    ("n=four", "-p n=four: n is an int in 01_demo; give a whole number such as 4"),
    ("rate=fast", "-p rate=fast: rate is a float in 01_demo; give a number such as 0.5"),
    ("rate=nan", "-p rate=nan: rate is a float in 01_demo; give a number such as 0.5"),
    ("sizes=1,2", "-p sizes=1,2: sizes is a list in 01_demo; give a JSON list such as "
                  "[1, 2, 4] (quote it in the shell)"),
    ("sizes={\"a\": 1}", "is a list in 01_demo"),
])
def test_values_of_the_wrong_type_are_rejected_naming_the_fix(labs, item, message):
    with pytest.raises(SystemExit) as err:
        runner.check_params([labs / "01_demo.ipynb"], runner.parse_params([item]))
    assert message in err.value.code


def test_a_parameter_some_notebooks_lack_goes_only_to_those_that_have_it(labs):
    plan = runner.check_params(runner.discover(root=labs), {"n": "8", "seed": "1"})
    assert plan.per_notebook == {"01_demo": {"n": 8}, "02_other": {"seed": 1}}
    assert plan.notes == ["-p n goes to 01_demo only (02_other has no such parameter)",
                          "-p seed goes to 02_other only (01_demo has no such parameter)"]


def test_parameter_given_twice_is_an_error():
    with pytest.raises(SystemExit, match="-p n given twice"):
        runner.parse_params(["n=1", "n=2"])


def test_only_with_a_typo_fails_before_the_run_folder_exists(labs, tmp_path):
    out = tmp_path / "run-y"
    msg = _main_error("--out", str(out), "--notebooks", str(labs), "--only", "01,3")
    assert msg == f"--only 01,3: '3' matched no notebook in {labs}; known: 01_demo, 02_other"
    assert not out.exists()


def test_a_run_folder_under_a_file_is_one_line_naming_it(labs, tmp_path):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub"
    msg = _main_error("--out", str(out), "--notebooks", str(labs))
    assert msg.startswith(f"cannot write the run folder {out}: ") and "\n" not in msg
    assert msg.endswith("pass another --out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_one_line_naming_it(labs, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        msg = _main_error("--out", str(ro / "run"), "--notebooks", str(labs))
    finally:
        ro.chmod(0o755)
    assert msg == (f"cannot write the run folder {ro / 'run'}: Permission denied; "
                   "make it writable or pass another --out")


def test_typed_parameters_reach_the_notebook_and_bad_records_do_not_abort_the_run(tmp_path, capsys,
                                                                                   monkeypatch):
    """-p fast=False arrives as the bool False (not the true string 'False'); a bad line in an
    existing records.jsonl is skipped with a warning, and the summary is written."""
    d = tmp_path / "nbs"
    d.mkdir()
    out = tmp_path / "run"
    out.mkdir()
    (out / "records.jsonl").write_text('{"lab": "00", "name": "old", "value": 1}\n{"lab": "00", "na\n')
    _lab(d / "01_demo.ipynb", PARAMS,
         "from labs_lib import records\n"
         "records.Recorder('01').headline(f'{type(fast).__name__} {fast} {n!r} {sizes!r}')")
    monkeypatch.setenv("LABS_RUN_DIR", str(tmp_path / "caller"))
    code = runner.main(["--out", str(out), "--notebooks", str(d), "-p", "fast=False",
                        "-p", "n=3", "-p", "sizes=[1,2]"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    # the kernel wrote into --out (below), yet the caller's environment is its own again
    assert os.environ["LABS_RUN_DIR"] == str(tmp_path / "caller")
    summary = json.loads((out / "summary.json").read_text())
    assert summary[0]["status"] == "ok" and summary[0]["headline"] == "bool False 3 [1, 2]"
    assert (out / "summary.md").exists()
    (warning,) = summary[0]["warnings"]
    assert f"{out / 'records.jsonl'}: skipped 1 line" in warning and "(line 2:" in warning
    assert f"  warning: {warning}" in printed


def test_the_summary_marks_labs_measured_on_a_busy_machine(tmp_path):
    from labs_lib import records

    p = tmp_path / "records.jsonl"
    for busy in (True, False, True):
        records.append({"lab": "01", "name": "ttft_p50", "value": 5.4, "unit": "s", "busy": busy,
                        **({"busy_reason": "load average 4.1 on 2 cores"} if busy else {})}, p)
    records.append({"lab": "01", "name": "headline", "value": "5.4 s TTFT", "unit": "text",
                    "busy": False}, p)
    head, busy = runner.lab_notes(tmp_path, "01")
    assert (head, busy) == ("5.4 s TTFT", "2 of 4 records measured on a busy machine "
                                          "(load average 4.1 on 2 cores)")
    table = runner.summary_table([runner.Result("01_x", "ok", 3.0, head, busy=busy)])
    assert "| 01_x | ok | 3 s | 0 | 5.4 s TTFT [busy machine: 2 of 4 records" in table


def test_sigterm_mid_run_writes_the_summary_marks_the_interrupted_lab_and_leaves_nothing(tmp_path):
    import psutil

    d = tmp_path / "nbs"
    d.mkdir()
    _lab(d / "01_fast.ipynb", "seed: int = 0\n", "x = 1")
    _lab(d / "02_slow.ipynb", "seed: int = 0\n", "import time\ntime.sleep(120)")
    _lab(d / "03_never.ipynb", "seed: int = 0\n", "x = 1")
    out = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-m", "labs_lib.runner", "--out", str(out),
                            "--notebooks", str(d)], stdout=subprocess.PIPE, text=True,
                           cwd=str(Path(__file__).resolve().parents[1]))
    deadline = time.monotonic() + 120
    kids: set[int] = set()
    while time.monotonic() < deadline:  # wait until lab 02's kernel is busy sleeping
        if (out / "02_slow.ipynb").exists() or (out / "logs" / "02_slow.stderr.log").exists():
            kids = {p.pid for p in psutil.Process(run.pid).children(recursive=True)}
            if kids:
                break
        time.sleep(0.2)
    time.sleep(2.0)
    kids |= {p.pid for p in psutil.Process(run.pid).children(recursive=True)}
    run.send_signal(signal.SIGTERM)
    stdout, _ = run.communicate(timeout=60)
    assert run.returncode == 143, stdout
    summary = {r["notebook"]: r for r in json.loads((out / "summary.json").read_text())}
    assert [summary[k]["status"] for k in ("01_fast", "02_slow", "03_never")] == \
        ["ok", "interrupted", "not run"], stdout
    assert "interrupted by SIGTERM" in summary["02_slow"]["error"]
    assert "| 02_slow | interrupted |" in (out / "summary.md").read_text()
    assert "interrupted by SIGTERM, summary written" in stdout
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(psutil.pid_exists(k) for k in kids):
        time.sleep(0.2)
    left = [k for k in kids if psutil.pid_exists(k) and psutil.Process(k).status() != "zombie"]
    assert left == [], f"left running after the runner: {left}"


@pytest.mark.parametrize("err, fix", [
    (PermissionError(13, "Permission denied"), "make it writable or pass another --out"),
    (OSError(28, "No space left on device"), "free some disk space (old run folders under runs/ "
                                             "can go) or pass --out on another disk"),
])
def test_an_unwritable_or_full_run_folder_is_one_line_naming_it(tmp_path, monkeypatch, err, fix):
    def refuse(*a, **k):
        raise err

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(SystemExit) as e:
        runner.prepare_out(tmp_path / "run")
    assert e.value.code == f"cannot write the run folder {tmp_path / 'run'}: {err.strerror}; {fix}"


def test_summary_counts_engine_starts_per_lab_and_in_all():
    from labs_lib.runner import Result, summary_table

    table = summary_table([Result("02_x", "ok", 100.0, "h", engine_starts=1, engine_start_s=66.4),
                           Result("04_y", "failed", 300.0, "", "cell 3: boom", engine_starts=4, engine_start_s=250.0)])
    lines = table.splitlines()
    assert lines[2] == "| 02_x | ok | 100 s | 1 in 66 s | h |"
    assert lines[3] == "| 04_y | failed | 300 s | 4 in 250 s | cell 3: boom |"
    assert lines[4] == "| all | | 400 s | 5 in 316 s | |"


def test_engine_starts_reads_notebook_outputs_and_only_new_logs(tmp_path):
    import json
    import os

    from labs_lib.runner import engine_starts

    nb = tmp_path / "lab.ipynb"
    nb.write_text(json.dumps({"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["vLLM engine ready in 5.5 s\n"]},
        {"output_type": "execute_result", "data": {"text/plain": "vLLM engine ready in 99 s"}}]}]}))
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "new.log").write_text("x\nvLLM server ready at http://127.0.0.1:8000 in 40.0 s\n")
    old = logs / "old.log"
    old.write_text("vLLM engine ready in 1000 s\n")
    os.utime(old, (1, 1))  # written before this lab started: another lab's worker
    assert engine_starts(nb, logs, since=100) == (2, 45.5)  # the execute_result is not a print


def test_engine_starts_counts_a_relayed_worker_line_once(tmp_path):
    """A worker's progress line is in its log (tagged) and, relayed, in the notebook: one start."""
    import json

    from labs_lib.procs import RELAY_TAG
    from labs_lib.runner import engine_starts

    nb = tmp_path / "lab.ipynb"
    nb.write_text(json.dumps({"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["vLLM engine ready in 55.1 s\n"]}]}]}))
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "worker.log").write_text(f"INFO loading\n{RELAY_TAG}vLLM engine ready in 55.1 s\n")
    (logs / "other.log").write_text("vLLM engine ready in 3.0 s\n")  # a worker that was not relayed
    assert engine_starts(nb, logs, since=0) == (2, 58.1)
