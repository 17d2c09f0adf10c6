#!/usr/bin/env bash
# Rebuild the result files behind docs/results.md: run every cpu sweep (finished runs are
# skipped, interrupted ones resumed) and copy each sweep's tables, plots and translation grid to
# docs/results/<sweep name>/. From the repository root:
#   bash sweeps/reproduce_cpu.sh                            # every sweeps/*_cpu.yaml, in turn
#   bash sweeps/reproduce_cpu.sh sweeps/table1_cpu.yaml     # some of them
#   ONLY=seed=0 bash sweeps/reproduce_cpu.sh                # one seed of each (see --only)
#   FROM_REPORT=1 bash sweeps/reproduce_cpu.sh              # keep the runs docs/results lists
#                                                           # as done (see --from-report)
# Runs go to $ROOT (default runs/sweeps). table1_h2z_cpu reads ../shared/data/horse2zebra.
set -euo pipefail
cd "$(dirname "$0")/.."
specs=("$@")
if [ ${#specs[@]} -eq 0 ]; then
    specs=(sweeps/*_cpu.yaml)
fi
for spec in "${specs[@]}"; do
    echo "=== $spec"
    patchcontrast sweep "$spec" --root "${ROOT:-runs/sweeps}" --report docs/results \
        ${ONLY:+--only "$ONLY"} ${FROM_REPORT:+--from-report}
done
