#!/usr/bin/env python3
"""Names the Swift tests a `swift test` log shows as started but never finished.

Swift Testing prints `◇ Test name() started.` when a test starts and `✔ Test name() passed
after …` or `✘ Test name() failed after …` (with `with N test cases` for parameterised tests)
when it ends. A run cut short by scripts/test.sh's time limit is left with the hung ones.
"""
import re
import sys

started, ended = {}, set()
with open(sys.argv[1], encoding="utf-8", errors="replace") as log:
    for line in log:
        if match := re.search(r"Test (\w+)\(.*\) started\.$", line.rstrip()):
            if " case passing " not in line:
                started.setdefault(match.group(1), line.strip())
        elif match := re.search(r"Test (\w+)\(.*\) (?:with \d+ test cases? )?(?:passed|failed)", line):
            ended.add(match.group(1))

unfinished = [name for name in started if name not in ended]
if unfinished:
    print(f"==> {len(unfinished)} test(s) started and never finished:")
    for name in unfinished:
        print(f"    {name}")
