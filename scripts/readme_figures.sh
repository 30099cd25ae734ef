#!/usr/bin/env bash
# Regenerate the README's quickstart table and the figures in docs/img/ from a real quickstart run.
#
#   bash scripts/readme_figures.sh [WORKDIR]
#
# Runs experiments/quickstart.yaml (15 CPU runs, a few minutes on 2 cores) into WORKDIR (default:
# a temporary folder, removed afterwards; give a folder to keep it, and a second call reuses its
# finished runs), then:
#   - prints the pivot as markdown (paste its table lines into the README's "What the quickstart
#     shows"; scripts/check_readme_table.py checks them),
#   - mpvgbench analyze on every run (256 validation images),
#   - docs/img/curves.png       training curves (report --curves),
#   - docs/img/correlation.png  token/PE correlation per layer, one line per method (mean over seeds),
#   - docs/img/{heatmaps,last_ln,token_norms}_<method>.png  per-run figures of the seed-0 runs,
#   - WORKDIR/report.html       the HTML report of all of it.
# OMP_NUM_THREADS=1: the numbers then do not depend on the machine's core count (CPU runs are
# bit-repeatable for a fixed thread count), so CI can compare them with the README.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
unset MPVGBENCH_DB

if [ $# -ge 1 ]; then
    WORK=$1
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d -t mpvgbench-readme.XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
fi
SPEC=experiments/quickstart.yaml
DB=$WORK/results.db
IMG=docs/img
mb() { "$PYTHON" -m mpvgbench "$@"; }

echo "[readme_figures] work dir $WORK (python: $PYTHON)" >&2
mb run "$SPEC" --db "$DB" --runs-dir "$WORK/runs" >&2
mb report --db "$DB" --spec "$SPEC" --format markdown -o "$WORK/table.md"
mb analyze "$SPEC" --db "$DB" --images 256 --out "$WORK/analysis" --device cpu >&2
mkdir -p "$IMG"
mb report --db "$DB" --spec "$SPEC" --curves -o "$IMG/curves.png"
mb report --db "$DB" --spec "$SPEC" --format html --analysis "$WORK/analysis" -o "$WORK/report.html"

# correlation by method (mean over seeds) and the seed-0 runs' figures, named by method
"$PYTHON" - "$DB" "$WORK/analysis" "$IMG" <<'EOF'
import json
import shutil
import sys
from pathlib import Path

from mpvgbench.curves import plot_correlation_by_method
from mpvgbench.store import Store

db, analysis_dir, img = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
analyses = json.loads((analysis_dir / "analysis.json").read_text())
written = [plot_correlation_by_method(analyses, img / "correlation.png")]
# the per-run figures the README's docs/img has always held (seed 0 of each method)
FIGURES = {"heatmaps": ("default", "pvg", "mpvg"), "last_ln": ("pvg", "mpvg"), "token_norms": ("pvg", "mpvg")}
with Store(db) as store:
    seed0 = {r.method_label: r.key for r in store.runs(spec_name="quickstart", status="finished") if r.seed == 0}
for figure, methods in FIGURES.items():
    for method in methods:
        source = analysis_dir / seed0[method] / f"{figure}.png"
        written.append(Path(shutil.copyfile(source, img / f"{figure}_{method}.png")))
print("[readme_figures] wrote " + " ".join(map(str, written)), file=sys.stderr)
EOF
echo "[readme_figures] wrote $IMG/curves.png and $WORK/report.html; the README table:" >&2
cat "$WORK/table.md"
