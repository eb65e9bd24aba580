#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Counts the TAP results of every test in one or more meson test logs.

Usage: test-summary.py [build/meson-logs/testlog.json ...]

Each line of a testlog.json is one test run. Its stdout is read as TAP:
"ok" counts as passed, "ok ... # SKIP" and "1..0 # SKIP" as skipped,
"not ok" as failed ("# TODO" failures do not count). A test that printed no
plan, or that meson marked FAIL/TIMEOUT/ERROR without any "not ok" line
(a crash, a sanitizer abort, a timeout) counts as one more failure; every
test of this project speaks TAP, so a test without a plan is a failure
unless meson reports it SKIP (exit 77). Prints a line per failing test,
then exactly "N passed, N failed, N skipped"; exits 1 if any failed or a
log is missing.
"""

import json
import re
import sys

OK_RX = re.compile(r"^ok\b(.*)$")
NOT_OK_RX = re.compile(r"^not ok\b(.*)$")
PLAN_RX = re.compile(r"^1\.\.(\d+)(.*)$")
SKIP_RX = re.compile(r"#\s*skip", re.IGNORECASE)
TODO_RX = re.compile(r"#\s*todo", re.IGNORECASE)
BAD_RESULTS = {"FAIL", "TIMEOUT", "ERROR", "UNEXPECTEDPASS", "INTERRUPT"}


def count_test(t):
        """(passed, failed, skipped, notes) of one test entry."""
        result = str(t.get("result", "")).upper().replace("TESTRESULT.", "")
        out = t.get("stdout") or ""
        passed = failed = skipped = 0
        notes = []
        plan = None
        for line in out.splitlines():
                line = line.rstrip()
                m = PLAN_RX.match(line)
                if m:
                        plan = int(m.group(1))
                        if plan == 0 and SKIP_RX.search(m.group(2)):
                                skipped += 1
                        continue
                m = NOT_OK_RX.match(line)
                if m:
                        if TODO_RX.search(m.group(1)):
                                passed += 1
                        else:
                                failed += 1
                                notes.append("not ok" + m.group(1))
                        continue
                m = OK_RX.match(line)
                if m:
                        if SKIP_RX.search(m.group(1)):
                                skipped += 1
                        else:
                                passed += 1
        if plan is None:
                if result == "SKIP" and not (passed or failed):
                        return 0, 0, 1, notes
                failed += 1
                notes.append(f"no TAP plan (result {result}, exit {t.get('returncode')})")
        elif result in BAD_RESULTS and failed == 0:
                failed += 1
                notes.append(f"meson result {result} (exit {t.get('returncode')}) without a failing TAP line")
        elif plan is not None and passed + failed + skipped < plan:
                failed += 1
                notes.append(f"only {passed + failed + skipped} of {plan} planned results")
        return passed, failed, skipped, notes


def main(argv):
        logs = argv[1:] or ["build/meson-logs/testlog.json"]
        tp = tf = ts = 0
        missing = False
        for path in logs:
                try:
                        f = open(path, encoding="utf-8", errors="replace")
                except OSError as e:
                        print(f"{path}: {e.strerror}", file=sys.stderr)
                        missing = True
                        continue
                with f:
                        for n, line in enumerate(f, 1):
                                line = line.strip()
                                if not line:
                                        continue
                                try:
                                        t = json.loads(line)
                                except ValueError:
                                        print(f"{path}:{n}: not JSON", file=sys.stderr)
                                        tf += 1
                                        continue
                                p, fl, s, notes = count_test(t)
                                tp += p
                                tf += fl
                                ts += s
                                if fl:
                                        print(f"FAIL {t.get('name')} ({path})")
                                        for x in notes[:20]:
                                                print(f"    {x}")
        print(f"{tp} passed, {tf} failed, {ts} skipped")
        return 1 if tf or missing else 0


if __name__ == "__main__":
        sys.exit(main(sys.argv))
