#!/usr/bin/env bash
# Re-split the GPU payload (.gpu/p1..pN from ../shared/gpu/stage) into smaller parts, so that one
# part plus this working tree stays under a transfer's 64 MiB (stage writes 60 MB parts; the tree
# with its results is several MB). Same bytes, same order: `.gpu/install finish` concatenates
# the parts sorted by name, as before.
#
#   tools/gpu_resplit.sh [PART_MB]    # default 45; then send .gpu/p1 .. .gpu/pN as usual
set -euo pipefail
cd "$(git rev-parse --show-toplevel)/.gpu"
mb=${1:-45}
ls p*/part* >/dev/null
tmp=$(mktemp -d)
cat $(ls p*/part* | sort -V) > "$tmp/payload.tar"
rm -rf p[0-9]*
split -b "${mb}000000" -d -a 2 "$tmp/payload.tar" part
i=1
for f in part*; do mkdir -p "p$i"; mv "$f" "p$i/"; i=$((i + 1)); done
rm -rf "$tmp"
echo "re-split into $((i - 1)) parts of at most ${mb} MB:"; du -sh p*
