"""Write results/gpu/<gpu>/README.md from the run folders kept there: one row per run, made from
its records (model, dtype, parameters given, the lab's headline, whether its checks passed) and
its summary.json (status, wall time). Nothing in the table is typed by hand.

    python tools/results_index.py results/gpu/h100
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labs_lib.records import load  # noqa: E402

SIZE_KEYS = ("model", "dtype")


def _summary(folder: Path) -> dict | None:
    """The runner's last result in this folder: summary.json, or the row of an older summary.md."""
    if (folder / "summary.json").exists():
        runs = json.loads((folder / "summary.json").read_text())
        runs = runs.get("results", runs) if isinstance(runs, dict) else runs
        return runs[-1]
    if (folder / "summary.md").exists():
        lines = [ln for ln in (folder / "summary.md").read_text().splitlines() if not ln.startswith("| all |")]
        cells = [c.strip() for c in lines[-1].split("|")[1:-1]]  # newer tables have an engine-starts column
        return {"notebook": cells[0], "status": cells[1], "wall_s": float(cells[2].split()[0]),
                "headline": cells[-1], "error": cells[-1]}
    return None


def row(folder: Path, base: Path) -> dict[str, str] | None:
    r = _summary(folder)
    if r is None:
        return None
    df = load(folder / "records.jsonl")
    lab = df[df["lab"] == r["notebook"][:2]] if len(df) else df
    model = dtype = ""
    if len(lab) and "params.model" in lab:
        model = str(lab["params.model"].dropna().iloc[-1]) if lab["params.model"].notna().any() else ""
        if "params.dtype" in lab and lab["params.dtype"].notna().any():
            dtype = str(lab["params.dtype"].dropna().iloc[-1])
    checks = lab[lab["name"] == "check"] if len(lab) else lab
    passed = f"{int(checks['value'].sum())}/{len(checks)}" if len(checks) else "-"
    fp = lab["fingerprint.gpu_name"].dropna() if "fingerprint.gpu_name" in lab else []
    note = r.get("headline") if r["status"] == "ok" else r.get("error", "")
    day = str(lab["time_utc"].dropna().iloc[-1])[:10] if len(lab) and "time_utc" in lab else ""
    return {"day": day, "run": str(folder.relative_to(base)), "model": Path(model).name if "/" in model else model,
            "dtype": dtype, "status": r["status"], "wall": f"{r['wall_s']:.0f} s",
            "checks": passed, "headline": note or "", "gpu": fp.iloc[-1] if len(fp) else ""}


def main(base: Path) -> str:
    folders = sorted({p.parent for p in base.rglob("summary.*")})
    rows = [x for f in folders if (x := row(f, base))]
    gpus = sorted({r["gpu"] for r in rows if r["gpu"]})
    lines = [f"# Results on the GPU host: {', '.join(gpus) or base.name}", "",
             "Executed by `python -m labs_lib.runner` (through `tools/gpu_series.sh`) on the offline",
             "GPU host. Each folder holds the executed notebook, `records.jsonl` (every measurement",
             "with the hardware fingerprint and parameters), figures, logs and the runner's summary.",
             "Models are shape-only (published configs, RANDOM weights: real speed and memory).",
             "Folders at the top are the labs' default model; `by-model/` holds the same labs run",
             "with other models. This page is written by `python tools/results_index.py` from those",
             "files; nothing in the table is typed by hand. A row dated before the newest ran an",
             "earlier version of its notebook (`git log` on the folder says which).", "",
             "| run | date | model | dtype | status | wall time | checks passed | headline |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['day']} | {r['model']} | {r['dtype']} | {r['status']} | {r['wall']} | "
              f"{r['checks']} | {r['headline']} |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    base = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "results" / "gpu" / "h100").resolve()
    text = main(base)
    (base / "README.md").write_text(text)
    print(text)
