"""Run one transformers model-test file stock and routed, and list what passes stock but not routed.

    python tools/stock_tests/run.py TESTS_ROOT tests/models/llava/test_modeling_llava.py [--out DIR] [PYTEST_ARGS...]

TESTS_ROOT is the folder holding transformers' ``tests/`` package (a v5.24.0 checkout, or a
reconstruction of the files the test file imports). Each run writes a junit xml to DIR; the
comparison prints the counts and every stock-pass/routed-fail test with the first line of its error.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_SRC = HERE.parent.parent / "src"


def run_pytest(tests_root: Path, test_file: str, junit: Path, routed: bool, extra: list[str]) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_SRC), str(HERE), str(tests_root), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")  # integration tests that download fail at once instead of hanging
    env["REROUTE_ROUTE_STOCK_TESTS"] = "1" if routed else "0"
    command = [
        sys.executable, "-m", "pytest", test_file, "-p", "routed_plugin", "-p", "no:cacheprovider",
        "-q", "-rA", f"--junitxml={junit}", f"--rootdir={tests_root}", *extra,
    ]  # fmt: skip
    subprocess.run(command, cwd=tests_root, env=env, check=False)


def outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """test id -> (passed | failed | skipped, first line of the message)."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", (child.get("message") or "").splitlines()[0:1]
                message = message[0] if message else ""
                break
            if child.tag == "skipped":
                outcome, message = "skipped", child.get("message") or ""
        result[name] = (outcome, message)
    return result


def counts(results: dict[str, tuple[str, str]]) -> str:
    tally = {k: sum(1 for o, _ in results.values() if o == k) for k in ("passed", "failed", "skipped")}
    return f"{tally['passed']} passed, {tally['failed']} failed, {tally['skipped']} skipped"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests_root", type=Path)
    parser.add_argument("test_file")
    parser.add_argument("--out", type=Path, default=Path("stock_test_results"))
    parser.add_argument("--compare-only", action="store_true", help="reuse the junit files in --out")
    args, pytest_args = parser.parse_known_args()
    pytest_args = [a for a in pytest_args if a != "--"]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.test_file).stem
    junits = {mode: (args.out / f"{stem}.{mode}.xml").resolve() for mode in ("stock", "routed")}
    if not args.compare_only:
        for mode, junit in junits.items():
            run_pytest(args.tests_root.resolve(), args.test_file, junit, mode == "routed", pytest_args)
    stock, routed = outcomes(junits["stock"]), outcomes(junits["routed"])
    print(f"stock:  {counts(stock)}")
    print(f"routed: {counts(routed)}")
    regressions = sorted(t for t, (o, _) in stock.items() if o == "passed" and routed.get(t, ("missing",))[0] != "passed")
    print(f"passed stock, not routed: {len(regressions)}")
    for test in regressions:
        outcome, message = routed.get(test, ("missing", ""))
        print(f"  {test} [{outcome}] {message[:300]}")


if __name__ == "__main__":
    main()
