"""Print tests/file_costs.txt from a junit report of a full run (pytest --junitxml=REPORT.xml)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import defaultdict

HEADER = open(__file__.replace(".py", ".txt")).read().split("\n   ")[0].splitlines()  # noqa: SIM115
MIN_SECONDS = 10


def main(report: str) -> None:
    seconds: dict[str, float] = defaultdict(float)
    for case in ET.parse(report).iter("testcase"):
        parts = []
        for part in case.get("classname", "").split("."):
            parts.append(part)
            if part.startswith("test_"):
                break
        seconds["/".join(parts) + ".py"] += float(case.get("time", 0))
    print("\n".join(line for line in HEADER if line.startswith("#")))
    for path, spent in sorted(seconds.items(), key=lambda item: -item[1]):
        if spent >= MIN_SECONDS:
            print(f"{spent:6.0f} {path}")


if __name__ == "__main__":
    main(sys.argv[1])
