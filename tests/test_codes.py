"""The generated code lists agree with their data file."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_generated_codes_are_current() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_codes.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
