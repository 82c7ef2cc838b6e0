#!/usr/bin/env bash
# Run lab notebooks one after another within a wall-clock budget, each into its own run folder
# under $OUT (executed notebook, records.jsonl, figures, logs, summary.md). Used on the GPU host,
# where one command may run at most 10 minutes: a job that cannot start with MIN_LEFT seconds
# left is skipped, and says so; a job that runs past the budget is stopped by `timeout`, and
# what it had written so far stays in its folder.
#
#   tools/gpu_series.sh BUDGET_S LABEL:NN[:name=value;name=value...] ...
#   tools/gpu_series.sh 540 03-default:03 "03-qwen7b:03:model=Qwen2.5-7B"
#
# Parameters are separated by ';' (list values contain commas). Needs the project root on
# PYTHONPATH and papermill importable (see README, "Running on a GPU host without network").
set -u
budget=${1:?usage: tools/gpu_series.sh BUDGET_S LABEL:NN[:params] ...}; shift
: "${OUT:?set OUT to the folder that collects the run folders}"
min_left=${MIN_LEFT:-60}
start=$(date +%s)
# Bytecode, once: a host whose Python writes no .pyc files (PYTHONDONTWRITEBYTECODE in its image,
# a site unpacked without them) compiles every module it imports from source, in every process;
# each vLLM start imports torch, transformers and vLLM twice (the notebook's worker or the server,
# then its engine core). PRECOMPILE=0 skips this.
if [ "${PRECOMPILE:-1}" = 1 ]; then
  site=$(python3 -c 'import importlib.util as u, pathlib as p; print(p.Path(u.find_spec("torch").origin).parents[1])' 2>/dev/null)
  IFS=: read -ra dirs <<<"${PYTHONPATH:-}"
  for d in "${dirs[@]}" $site; do
    [ -d "$d" ] && python3 -m compileall -q -j 0 "$d" >/dev/null 2>&1
  done
  echo "bytecode compiled in $(( $(date +%s) - start )) s (${dirs[*]} $site)"
fi
for job in "$@"; do
  IFS=: read -r label nb params <<<"$job"
  left=$(( budget - ($(date +%s) - start) ))
  if [ "$left" -lt "$min_left" ]; then echo "SKIP $label: only ${left} s of the budget left"; continue; fi
  args=()
  IFS=';' read -ra kv <<<"${params:-}"
  for p in "${kv[@]}"; do [ -n "$p" ] && args+=(-p "$p"); done
  echo "== $label (lab $nb${params:+, $params}; ${left} s left)"
  timeout "$left" python3 -m labs_lib.runner --out "$OUT/$label" --only "$nb" "${args[@]}" | tail -n 3
done
echo "series wall time: $(( $(date +%s) - start )) s"
