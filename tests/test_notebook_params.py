"""Every lab's `parameters` cell is read by our parser and by papermill's, with the same names
and types; `-p` on the real labs fails before any work when a name or a value is wrong."""

import logging
from pathlib import Path

import pytest

from labs_lib import nbparams, runner

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_our_parser_reads_every_parameters_cell(nb):
    src = nbparams.parameters_source(nb)
    assert src is not None, f"{nb.name} has no code cell tagged 'parameters'"
    declared = nbparams.declared(nb)
    assert "profile" in declared, f"{nb.name}: every lab has a profile parameter"
    untyped = [p.name for p in declared.values() if p.type not in nbparams.TYPES]
    assert untyped == [], f"{nb.name}: declare a type (name: type = default) for {untyped}"
    lines = [ln for ln in src.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(lines) == len(declared), f"{nb.name}: one declaration per line, nothing else"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_declared_parameter_with_its_type(nb, caplog):
    """papermill skips any line with more than one '=' (one in a comment is enough) and then
    calls the parameter unknown. Comments in parameters cells must not contain '='."""
    import papermill

    caplog.set_level(logging.WARNING, logger="papermill")
    got = papermill.inspect_notebook(str(nb))
    ours = nbparams.declared(nb)
    bad = [ln for ln in nbparams.parameters_source(nb).splitlines() if ln.count("=") > 1]
    assert {n: got.get(n, {}).get("inferred_type_name") for n in ours} == \
        {n: p.type for n, p in ours.items()}, f"papermill cannot parse these lines of {nb.name}: {bad}"
    assert "Unable to parse" not in caplog.text


def test_unknown_parameter_on_lab_01_fails_before_any_work_naming_the_known_ones(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        runner.main(["--out", str(out), "--only", "01", "-p", "batch_sizes=[1,2]"])
    msg = err.value.code
    assert msg.startswith("-p batch_sizes=[1,2]: 01_serving_metrics has no parameter "
                          "'batch_sizes'")
    assert "its parameters: " in msg and "concurrencies" in msg and "run_vllm_bench" in msg
    assert not out.exists()


def test_run_vllm_bench_false_is_the_bool_false():
    lab01 = [p for p in NOTEBOOKS if p.stem.startswith("01_")]
    plan = runner.check_params(lab01, {"run_vllm_bench": "False"})
    assert plan.per_notebook[lab01[0].stem]["run_vllm_bench"] is False
    with pytest.raises(SystemExit, match="run_vllm_bench is a bool in 01_serving_metrics"):
        runner.check_params(lab01, {"run_vllm_bench": "nope"})


def test_a_parameter_of_one_lab_goes_to_that_lab_only_in_a_full_run():
    plan = runner.check_params(NOTEBOOKS, {"run_vllm_bench": "0", "profile": "cpu"})
    assert all(p["profile"] == "cpu" for p in plan.per_notebook.values())
    has = [stem for stem, p in plan.per_notebook.items() if "run_vllm_bench" in p]
    assert has == ["01_serving_metrics"] and plan.notes[0].startswith(
        "-p run_vllm_bench goes to 01_serving_metrics only")
