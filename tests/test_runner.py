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
