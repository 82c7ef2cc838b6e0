"""Prove that a plain (non-editable) install of perf-labs is whole: `make test-wheel`.

The development venv installs labs_lib editable, which hides packaging mistakes: a model config
missing from the wheel, or a path computed from the source tree, works there and breaks for
everyone who runs `pip install perf-labs` (the Colab cell, the GPU host's wheelhouse). So:

1. build the wheel (`pip wheel --no-deps`) from a copy of the files git tracks or would track
   (untracked but not ignored files count: a new config file that is not yet added still ships),
   and check it carries labs_lib/configs/*.json;
2. install it with --no-deps into a clean venv in a temporary folder; the dependencies come from
   the running interpreter's site-packages through a .pth line, which puts them on sys.path
   WITHOUT running that venv's own .pth files, so its editable finder for labs_lib stays off;
3. in that venv, from a temporary working directory outside the repository, with LABS_CACHE in a
   fresh temporary folder and LABS_RUN_DIR unset (python -I: no PYTHONPATH, no user site), check
   labs_lib is imported from the clean venv, every registry model resolves, and
   `records.run_dir()` lies under the working directory (never in site-packages).

Run it with the project venv's python (it provides the dependencies): `.venv/bin/python
tools/check_wheel.py [--keep]`. About 30 to 60 s on 2 cores, most of it SmolLM2's one-time GGUF
conversion in the fresh cache. Exit 0 when all holds; otherwise each problem is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = "labs_lib/configs"

# Runs inside the clean venv (python -I), cwd = a temporary folder outside the repository.
PROBE = r"""
import importlib.metadata, json, sys, time
from pathlib import Path

venv, cwd, shapes = Path(sys.prefix).resolve(), Path.cwd().resolve(), json.loads(sys.argv[1])
problems = []

def inside(p, d):
    return Path(p).resolve().is_relative_to(d)

editable = [repr(f) for f in sys.meta_path if "editable" in repr(f).lower()]
if editable:
    problems.append(f"an editable finder is active in the clean venv: {editable}")
import labs_lib
if not inside(labs_lib.__file__, venv):
    problems.append(f"labs_lib comes from {labs_lib.__file__}, not from the wheel in {venv}")
dist = importlib.metadata.distribution("perf-labs")
if not inside(dist.locate_file(""), venv):
    problems.append(f"perf-labs metadata comes from {dist.locate_file('')}, not {venv}")

from labs_lib import models, records
names = models.known_models()
missing = sorted(set(shapes) - set(names))
if missing:
    problems.append(f"configs {missing} are in the repository but not registry models here")
for name in names:
    t = time.perf_counter()
    try:
        spec = models.resolve(name)
        print(f"  resolved {name:<24} {spec.kind:<9} {time.perf_counter() - t:6.1f} s", flush=True)
    except Exception as e:
        problems.append(f"resolve({name!r}) failed: {type(e).__name__}: {e}")
try:
    run = records.run_dir().resolve()
    if not run.is_relative_to(cwd):
        problems.append(f"records.run_dir() is {run}: runs must go under the working "
                        f"directory {cwd}, not into the installed package")
except Exception as e:
    problems.append(f"records.run_dir() failed: {type(e).__name__}: {e}")
print(json.dumps({"labs_lib": labs_lib.__file__, "models": len(names), "problems": problems}))
sys.exit(1 if problems else 0)
"""


class Failed(Exception):
    """A step failed; the message says which and why."""


def sh(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], text=True, capture_output=True, **kw)
    if r.returncode:
        raise Failed(f"`{' '.join(map(str, cmd))}` exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r


def source_files() -> list[str]:
    """What a clean clone would hold, plus new files not yet added (git ls-files)."""
    try:
        out = sh("git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    except (Failed, FileNotFoundError) as e:
        raise Failed(f"cannot list the repository's files with git ({e}); run from a clone") from e
    return [f for f in out.stdout.split("\0") if f and (ROOT / f).is_file()]


def build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    files = source_files()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    flags = ["--no-build-isolation"] if _has_setuptools() else []  # offline and faster
    sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *flags, "-w", tmp / "dist", src)
    wheels = sorted((tmp / "dist").glob("perf_labs-*.whl"))
    if len(wheels) != 1:
        raise Failed(f"expected one perf_labs wheel in {tmp / 'dist'}, found {wheels}")
    expected = sorted(f for f in files if f.startswith(CONFIGS + "/") and f.endswith(".json"))
    if not expected:
        raise Failed(f"no {CONFIGS}/*.json in the repository: where are the model configs?")
    if "labs_lib/py.typed" in files:
        expected.append("labs_lib/py.typed")
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    if lost := [f for f in expected if f not in names]:
        raise Failed(f"the wheel lacks {lost}: check [tool.setuptools.package-data]")
    return wheels[0]


def _has_setuptools() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 68


def clean_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv)
    py = venv / "bin" / "python"
    sh(sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index",
       "--disable-pip-version-check", wheel)
    site = Path(sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    # Plain path lines: appended to sys.path, their own .pth files (the editable finder) not run.
    (site / "zz_perf_labs_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    return py


def probe(tmp: Path, py: Path) -> dict:
    work, cache = tmp / "work", tmp / "cache"
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "LABS_RUN_DIR", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(LABS_CACHE=str(cache), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    shapes = sorted(p.stem for p in (ROOT / CONFIGS).glob("*.json"))
    r = subprocess.run([str(py), "-I", "-c", PROBE, json.dumps(shapes)], cwd=work, env=env,
                       text=True, capture_output=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]  # tokenizer training prints blanks
    for ln in lines[:-1]:
        print(ln, flush=True)
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise Failed(f"the probe in the clean venv crashed (exit {r.returncode}):\n"
                     f"{r.stdout}{r.stderr[-4000:]}") from None
    if result["problems"]:
        raise Failed("in a clean install of the wheel:\n  - " + "\n  - ".join(result["problems"]))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder and say where")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="perf-labs-wheel-"))
    t0 = time.perf_counter()
    try:
        wheel = build_wheel(tmp)
        kb = wheel.stat().st_size / 1024
        print(f"check_wheel: built {wheel.name} ({kb:.0f} KiB) in {time.perf_counter() - t0:.1f} s",
              flush=True)
        t1 = time.perf_counter()
        py = clean_venv(tmp, wheel)
        print(f"check_wheel: installed it into a clean venv in {time.perf_counter() - t1:.1f} s",
              flush=True)
        t2 = time.perf_counter()
        result = probe(tmp, py)
        print(f"check_wheel: OK: labs_lib from the wheel, {result['models']} registry models "
              f"resolve, runs go to the working directory ({time.perf_counter() - t2:.1f} s; "
              f"total {time.perf_counter() - t0:.1f} s)")
        return 0
    except Failed as e:
        print(f"check_wheel: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if args.keep:
            print(f"check_wheel: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
