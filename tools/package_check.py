"""Checks an installed `headend` wheel outside the source tree (`make package-check`):
the command runs, the meter-model profiles, the migrations and the page's files came
with it, and a store made from nothing takes a grid and meters.

    python tools/package_check.py        # with the wheel's venv's python, from /tmp
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

GRID = """node_id,parent_id,level,commodity,name,admin_unit,lat,lon
UZ,,republic,any,Uzbekistan,UZ,41.3,64.6
TK,UZ,region,any,Tashkent,TK,41.3,69.3
T1,TK,transformer,electricity,T1,TK,41.3,69.3
"""
METERS = """serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon
M1,electricity,consumer,T1,A1,e1ph,,,,,41.3,69.3
"""


def main() -> int:
    import headend
    from headend import profiles
    from headend.config import load
    from headend.store.db import migrations

    here = Path(headend.__file__).resolve().parent
    if "site-packages" not in here.parts:
        print(f"headend is imported from {here}, not an installed wheel: run this from its venv")
        return 1
    cfg = load()
    models = [p["name"] for p in profiles.load_all(cfg.profiles_dir)]
    static = here / "web" / "static"
    checks = {
        "profiles": sorted(models) == ["e1ph", "e3ph", "gas-g4"],
        "migrations": len(migrations()) >= 20,
        "page": all((static / f).exists() for f in ("index.html", "room.js", "room.css")),
        "outline": (static / "outline.json").exists(),
    }
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "grid.csv").write_text(GRID)
        (root / "meters.csv").write_text(METERS)
        env_cmd = [sys.executable, "-m", "headend"]
        data = ["--data", str(root / "data")]

        def run(*args: str) -> str:
            r = subprocess.run(
                [*env_cmd, *args, *data], capture_output=True, text=True, check=False, cwd=d
            )
            if r.returncode != 0:
                raise SystemExit(f"headend {' '.join(args)} failed: {r.stderr.strip()}")
            return r.stdout

        run("grid", "import", str(root / "grid.csv"))
        run("meters", "import", str(root / "meters.csv"))
        out = run("sql", "SELECT count() AS n FROM ami.meters FINAL", "--format", "json")
        checks["store"] = '"n": 1' in out
    for name, ok in checks.items():
        print(f"{'ok ' if ok else 'BAD'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
