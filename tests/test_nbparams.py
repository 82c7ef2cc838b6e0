"""The parameters-cell parser: comments may hold anything; types come from annotations."""

import pytest

from labs_lib import nbparams

CELL = '''
profile: str = "auto"  # "auto" (detect), "cpu" or "gpu"; 0 = x == y
label: str = "a # not a comment = still the value"  # the real comment
sizes: list = [  # [] = sized by profile
    1, 2,
    4,
]
limit: int | None = None  # None = no limit
ratio: "float" = 1  # a string annotation; an int default for a float parameter
plain = True  # no annotation: bool from the default
import os  # other statements are ignored
'''


def test_comments_with_equals_quotes_and_hashes_do_not_confuse_the_parser():
    ps = nbparams.parse_cell(CELL)
    assert list(ps) == ["profile", "label", "sizes", "limit", "ratio", "plain"]
    assert ps["profile"].help == '"auto" (detect), "cpu" or "gpu"; 0 = x == y'
    assert ps["label"].default == "a # not a comment = still the value"
    assert ps["label"].help == "the real comment"
    assert (ps["sizes"].type, ps["sizes"].default, ps["sizes"].help) == ("list", [1, 2, 4],
                                                                          "[] = sized by profile")
    assert (ps["limit"].type, ps["limit"].optional) == ("int", True)
    assert (ps["ratio"].type, ps["plain"].type) == ("float", "bool")


def test_optional_parameters_accept_none_and_the_declared_type():
    ps = nbparams.parse_cell(CELL)
    assert nbparams.convert(ps["limit"], "none", "x") is None
    assert nbparams.convert(ps["limit"], "7", "x") == 7
    assert nbparams.convert(ps["ratio"], "1", "x") == 1.0
    with pytest.raises(ValueError, match="limit is an int in x"):
        nbparams.convert(ps["limit"], "seven", "x")


def test_a_cell_that_is_not_python_names_the_notebook_and_line():
    with pytest.raises(ValueError, match=r"01_x: the parameters cell is not valid Python \(line 2"):
        nbparams.parse_cell("a: int = 1\nb: int = (\n", "01_x")


def test_a_notebook_without_a_parameters_cell_declares_nothing(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x: int = 1")])
    nbformat.write(nb, tmp_path / "01_x.ipynb")
    assert nbparams.declared(tmp_path / "01_x.ipynb") == {}
    with pytest.raises(ValueError, match="01_x has no parameter 'x'; its parameters: \\(none\\)"):
        nbparams.for_notebooks([tmp_path / "01_x.ipynb"], {"x": "2"})
