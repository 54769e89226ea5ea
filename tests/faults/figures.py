"""The fault suite's figures (requests, 5xx, events lost, recovery time), printed and kept
in `$TIDEGATE_FAULT_FIGURES` (a JSON-lines file) when that is set, for the report."""

from __future__ import annotations

import json
import os


def report(fault: str, figures: dict) -> None:
    print(f"\n[fault] {fault}: {figures}")
    path = os.environ.get("TIDEGATE_FAULT_FIGURES")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"fault": fault, **figures}) + "\n")
