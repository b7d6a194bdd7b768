#!/usr/bin/env bash
# What a user gets from `pip install reroute` with no extras: build the wheel from this checkout,
# install it into a fresh venv beside torch alone, and check that
#   - `reroute demo --num-samples 10` prints its table and exits 0 (no figure without the 'viz' extra,
#     one line saying how to get it), and
#   - each command that needs an extra answers in one line naming it, with exit status 2, before any work.
#
#   bash tools/fresh_install_check.sh            (a few minutes; not part of CI)
#   KEEP=1 bash tools/fresh_install_check.sh     keeps the scratch folder (venvs, wheel, demo output)
#
# torch is pinned to 2.13.0: the CPU build lies on this disk, and an unpinned torch would pull a CUDA build.
set -euo pipefail

PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/reroute-fresh-install.XXXXXX")
if [[ -z "${KEEP:-}" ]]; then trap 'rm -rf "$WORK"' EXIT; fi
echo "scratch folder: $WORK"

step() { printf '\n== %s\n' "$*"; }

step "build the wheel from the checkout's files (a copy, so the checkout gets no build/ or egg-info)"
mkdir -p "$WORK/src"
(cd "$ROOT" && git ls-files -z | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
"$PYTHON" -m venv "$WORK/build-venv"
"$WORK/build-venv/bin/pip" install --quiet build
"$WORK/build-venv/bin/python" -m build --wheel --outdir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 \
    || { tail -20 "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/reroute-*.whl)
echo "built $(basename "$WHEEL")"

step "a fresh venv: $TORCH, then the wheel with no extras"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet "$TORCH"
"$WORK/venv/bin/pip" install --quiet "$WHEEL"
for module in matplotlib datasets pyarrow; do
    if "$WORK/venv/bin/python" -c "import $module" 2>/dev/null; then
        echo "FAIL: $module is installed without any extra, so this check shows nothing"; exit 1
    fi
done
echo "installed: $("$WORK/venv/bin/pip" list 2>/dev/null | grep -iE '^(reroute|torch|transformers) ' | tr -s ' ' | paste -sd ';')"
echo "absent: matplotlib, datasets, pyarrow (the 'viz' and 'eval' extras)"

# Run from a folder of its own, so nothing is imported from the checkout.
mkdir -p "$WORK/run" && cd "$WORK/run"
REROUTE="$WORK/venv/bin/reroute"
failures=0

step "reroute demo --num-samples 10 (must print its table and exit 0)"
set +e
"$REROUTE" demo --num-samples 10 --output "$WORK/run/demo" >demo.out 2>demo.err
code=$?
set -e
cat demo.out
if [[ $code -ne 0 ]]; then
    echo "FAIL: exit $code"; tail -20 demo.err; failures=$((failures + 1))
elif ! grep -q '^| vanilla | - |' demo.out || [[ ! -s "$WORK/run/demo/results.json" ]]; then
    echo "FAIL: no table printed or no results.json written"; failures=$((failures + 1))
elif ! grep -qF "pip install 'reroute[viz]'" demo.out; then
    echo "FAIL: no line saying how to get the figure"; failures=$((failures + 1))
else
    echo "ok: exit 0, table printed, results.json and results.md written, no figure without matplotlib"
fi

# expect_extra EXTRA COMMAND...: exit 2 and exactly one line on stderr naming the extra's pip command.
expect_extra() {
    local extra=$1; shift
    printf '\n$ reroute %s\n' "$*"
    set +e
    "$REROUTE" "$@" >cmd.out 2>cmd.err
    local code=$?
    set -e
    cat cmd.err
    local lines
    lines=$(wc -l <cmd.err)
    if [[ $code -eq 2 && $lines -eq 1 ]] && grep -qF "needs the '$extra' extra" cmd.err \
        && grep -qF "pip install 'reroute[$extra]'" cmd.err; then
        echo "ok: exit 2, one line naming the '$extra' extra"
    else
        echo "FAIL: exit $code, $lines line(s) on stderr (want exit 2 and one line naming the '$extra' extra)"
        failures=$((failures + 1))
    fi
}

step "commands that need an extra (each must answer in one line naming it, exit 2)"
printf 'P6\n1 1\n255\n\377\377\377' >scene.ppm
expect_extra eval eval --model "$WORK/run/no-model-needed" --data-dir "$WORK/run" --preset fastv --tier 64
expect_extra eval paper-table --model "$WORK/run/no-model-needed" --data-dir "$WORK/run"
expect_extra viz show --image scene.ppm --prompt "Where is the red square?"
expect_extra viz analyze --num-samples 4
expect_extra viz bench --quick --plot speedup.png

step "result"
if [[ $failures -ne 0 ]]; then
    echo "FAILED: $failures check(s)"; exit 1
fi
echo "all checks passed"
