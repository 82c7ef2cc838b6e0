"""A notebook's parameters, read from its `parameters` cell; `-p name=value` checked against them.

Every lab declares its parameters in one code cell tagged `parameters`, one per line:

    name: type = default  # meaning (anything: `=`, quotes, parentheses)

`declared()` reads that cell with Python's own parser (`ast`), so a comment may say anything.
`convert()` turns a command-line string into the declared type (bool, int, float, list, dict,
str) or fails naming the parameter, the notebook and what it accepts. `for_notebooks()` checks
a whole `-p` list against the selected notebooks before anything runs: a name no notebook
declares is an error that lists the known names; a name some notebooks lack goes only to those
that declare it.

>>> ps = parse_cell('n: int = 4  # requests; 0 = sized by profile\\nfast: bool = False\\n')
>>> [(p.name, p.type, p.default, p.help) for p in ps.values()]
[('n', 'int', 4, 'requests; 0 = sized by profile'), ('fast', 'bool', False, '')]
>>> convert(ps["fast"], "No", "01_demo")
False
>>> convert(ps["n"], "3.5", "01_demo")
Traceback (most recent call last):
...
ValueError: -p n=3.5: n is an int in 01_demo; give a whole number such as 4
"""

from __future__ import annotations

import ast
import difflib
import io
import json
import math
import re
import tokenize
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TYPES = ("bool", "int", "float", "list", "dict", "str")
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
NONE = ("none", "null")


@dataclass(frozen=True)
class Param:
    """One declared parameter. `type` is one of TYPES, or '' when not declared (any value)."""

    name: str
    type: str
    default: Any
    help: str = ""
    optional: bool = False  # `int | None`: also accepts none/null


def _type_of(annotation: ast.expr | None, default: Any) -> tuple[str, bool]:
    """(type name, accepts None) from an annotation, else from the default's Python type.

    >>> _type_of(ast.parse("x: list[int] | None = None").body[0].annotation, None)
    ('list', True)
    """
    if annotation is None:
        kind = type(default).__name__
        return (kind if kind in TYPES else ""), default is None
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return _type_of(ast.parse(annotation.value, mode="eval").body, default)  # "int"
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):  # X | None
        sides = [annotation.left, annotation.right]
        rest = [s for s in sides if not (isinstance(s, ast.Constant) and s.value is None)]
        if len(rest) == 1:
            return _type_of(rest[0], default)[0], True
        return "", True
    if isinstance(annotation, ast.Subscript):  # list[int], dict[str, int], Optional[int]
        base = annotation.value
        if isinstance(base, ast.Name) and base.id == "Optional":
            return _type_of(annotation.slice, default)[0], True
        return _type_of(base, default)
    if isinstance(annotation, ast.Name):
        name = {"List": "list", "Dict": "dict"}.get(annotation.id, annotation.id)
        return (name if name in TYPES else ""), False
    return "", False


def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line (without '#')."""
    out: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def parse_cell(source: str, where: str = "the parameters cell") -> dict[str, Param]:
    """Every `name: type = default` (or `name = default`) in a parameters cell, in order.

    Other statements (imports, prints) are ignored; a default that is not a literal keeps its
    source text. A cell that is not valid Python is a ValueError naming `where` and the line.

    >>> list(parse_cell('a = 1  # x = y\\nb: str = "="  # "quoted" = fine\\nimport os\\n'))
    ['a', 'b']
    >>> parse_cell("x: int = = 3", "01_demo")
    Traceback (most recent call last):
    ...
    ValueError: 01_demo: the parameters cell is not valid Python (line 1: invalid syntax); fix that line
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"{where}: the parameters cell is not valid Python (line {e.lineno}: "
                         f"{e.msg}); fix that line") from None
    comments = _comments(source)
    out: dict[str, Param] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets, annotation, value = [node.target], node.annotation, node.value
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            targets, annotation, value = node.targets, None, node.value
        else:
            continue
        try:
            default = ast.literal_eval(value) if value is not None else None
        except ValueError:
            default = ast.get_source_segment(source, value)
        kind, optional = _type_of(annotation, default)
        note = next((comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)
                     if n in comments), "")
        for t in targets:
            out[t.id] = Param(t.id, kind, default, note, optional or default is None)
    return out


def parameters_source(nb_path: str | Path) -> str | None:
    """The source of the notebook's cell tagged `parameters`, or None if it has none."""
    nb_path = Path(nb_path)
    try:
        nb = json.loads(nb_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read notebook {nb_path}: {e}") from None
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell.get("source", "")
            return "".join(src) if isinstance(src, list) else src
    return None


def declared(nb_path: str | Path) -> dict[str, Param]:
    """The parameters a notebook declares (empty if it has no `parameters` cell)."""
    src = parameters_source(nb_path)
    return {} if src is None else parse_cell(src, Path(nb_path).stem)


def _example(p: Param, fallback: str) -> str:
    d = p.default
    if p.type in ("list", "dict"):
        return json.dumps(d) if d else fallback
    return fallback if d in (None, "", 0) or isinstance(d, str) and p.type != "str" else repr(d)


def convert(p: Param, raw: str, where: str) -> Any:
    """The command-line string `raw` as `p`'s declared type; ValueError naming what it accepts.

    bool: true/false, 1/0, yes/no (any case). int: whole numbers only. float: finite numbers.
    list/dict: JSON (or a Python literal). str: as given. Undeclared type: JSON if it parses,
    else the string.

    >>> convert(Param("sizes", "list", []), "[1, 2, 4]", "02_demo")
    [1, 2, 4]
    >>> convert(Param("run_vllm_bench", "bool", True), "False", "01_demo")
    False
    >>> convert(Param("run_vllm_bench", "bool", True), "Flase", "01_demo")
    Traceback (most recent call last):
    ...
    ValueError: -p run_vllm_bench=Flase: run_vllm_bench is a bool in 01_demo; use true or false (also 1/0, yes/no)
    """
    text = raw.strip()
    head = f"-p {p.name}={raw}: {p.name} is a{'n' if p.type[:1] in 'aeiou' else ''} {p.type} in {where}"
    if p.optional and p.type not in ("str", "") and text.lower() in NONE:
        return None
    if p.type == "bool":
        if text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
        raise ValueError(f"{head}; use true or false (also 1/0, yes/no)")
    if p.type == "int":
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        raise ValueError(f"{head}; give a whole number such as {_example(p, '4')}")
    if p.type == "float":
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return value
        raise ValueError(f"{head}; give a number such as {_example(p, '0.5')}")
    if p.type in ("list", "dict"):
        want = list if p.type == "list" else dict
        value = _literal(text)
        if isinstance(value, want):
            return value
        example = _example(p, "[1, 2, 4]" if want is list else '{"a": 1}')
        raise ValueError(f"{head}; give a JSON {p.type} such as {example} (quote it in the shell)")
    if p.type == "str":
        return raw
    value = _literal(text)
    return raw if value is _BAD else value


_BAD = object()


def _literal(text: str) -> Any:
    """JSON, else a Python literal (['a', 'b'] with single quotes), else _BAD."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _BAD


@dataclass
class Plan:
    """The checked parameters for each notebook, and notes on names only some notebooks have."""

    per_notebook: dict[str, dict[str, Any]]  # notebook stem -> {name: typed value}
    notes: list[str]


def for_notebooks(notebooks: Sequence[Path], raw: Mapping[str, str]) -> Plan:
    """Check `-p` values (name -> string) against the notebooks; typed values per notebook.

    Raises ValueError (one line per problem) if a name is declared by none of `notebooks` or a
    value does not convert. A name that only some notebooks declare goes only to those; the
    plan's notes say so.
    """
    decl = {Path(nb).stem: declared(nb) for nb in notebooks}
    plan = Plan({stem: {} for stem in decl}, [])
    errors: list[str] = []
    for name, value in raw.items():
        has = [stem for stem, ps in decl.items() if name in ps]
        if not has:
            errors.append(_unknown(name, value, decl))
            continue
        for stem in has:
            try:
                plan.per_notebook[stem][name] = convert(decl[stem][name], value, stem)
            except ValueError as e:
                errors.append(str(e))
        if len(has) < len(decl):
            lacking = [s for s in decl if s not in has]
            plan.notes.append(f"-p {name} goes to {', '.join(has)} only "
                              f"({', '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} "
                              "no such parameter)")
    if errors:
        raise ValueError("\n".join(dict.fromkeys(errors)))
    return plan


def _unknown(name: str, value: str, decl: Mapping[str, Mapping[str, Param]]) -> str:
    known = sorted({n for ps in decl.values() for n in ps})
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    if len(decl) == 1:
        (stem,) = decl
        known = list(decl[stem])  # in the order the cell declares them
        where = f"{stem} has no parameter {name!r}{hint}; its parameters: "
    else:
        where = (f"none of the selected notebooks ({', '.join(decl)}) has a parameter "
                 f"{name!r}{hint}; known parameters: ")
    return f"-p {name}={value}: {where}{', '.join(known) or '(none)'}"
