"""The situation room's country outline, from the Digital Chart of the World as GMT
ships it (DCW-GMT, LGPL-3+; Debian's gmt-dcw, installed by the Makefile).

    python tools/outline.py /usr/share/gmt-dcw/dcw-gmt.nc headend/web/static/outline.json

Writes Uzbekistan's outline and its neighbours' (for context), simplified to what a
country-wide map shows, as JSON: ``{"source": ..., "countries": [{"code", "name",
"rings": [[[lat, lon], ...], ...]}]}``. Nothing is fetched: the page reads this file.

DCW-GMT stores each country as two uint16 arrays, ``<CC>_lon`` and ``<CC>_lat``, with
``min`` and ``scale`` attributes (degrees = min + value / scale); a lon of 65535 starts
a new ring. DCW carries no regions (admin-1) for Uzbekistan, so none are drawn.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

COUNTRIES = {
    "UZ": ("Uzbekistan", 0.005),
    "KZ": ("Kazakhstan", 0.03),
    "KG": ("Kyrgyzstan", 0.02),
    "TJ": ("Tajikistan", 0.02),
    "TM": ("Turkmenistan", 0.02),
    "AF": ("Afghanistan", 0.03),
}
"""Country code: (name, simplification tolerance in degrees)."""
MARK = 65535
MIN_POINTS = 4


def rings(lon_raw: np.ndarray, lat_raw: np.ndarray, lon_attrs: Any, lat_attrs: Any) -> list[Any]:
    """The country's rings as arrays of (lat, lon) in degrees."""
    if lon_raw.shape != lat_raw.shape:
        raise ValueError(f"lon and lat differ in length ({lon_raw.shape} vs {lat_raw.shape})")
    starts = [int(i) for i in np.flatnonzero(lon_raw == MARK)] + [len(lon_raw)]
    out = []
    for a, b in itertools.pairwise(starts):
        lo = float(lon_attrs["min"][0]) + lon_raw[a + 1 : b] / float(lon_attrs["scale"][0])
        la = float(lat_attrs["min"][0]) + lat_raw[a + 1 : b] / float(lat_attrs["scale"][0])
        if len(lo) >= MIN_POINTS:
            out.append(np.column_stack([la, lo]))
    return out


def simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker (iterative): the points within `tolerance` of the line between
    their neighbours that are kept are dropped."""
    n = len(points)
    if n <= 2:
        return points
    keep = np.zeros(n, dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        a, b = points[i], points[j]
        seg = b - a
        mid = points[i + 1 : j]
        length = float(np.hypot(*seg))
        if length == 0.0:
            d = np.hypot(*(mid - a).T)
        else:
            d = np.abs(seg[0] * (mid[:, 1] - a[1]) - seg[1] * (mid[:, 0] - a[0])) / length
        k = int(np.argmax(d))
        if d[k] > tolerance:
            m = i + 1 + k
            keep[m] = True
            stack += [(i, m), (m, j)]
    return points[keep]


def outline(path: Path) -> dict[str, Any]:
    import h5py

    with h5py.File(path, "r") as f:
        version = f.attrs.get("version", b"?")
        out = []
        for code, (name, tolerance) in COUNTRIES.items():
            lon, lat = f[f"{code}_lon"], f[f"{code}_lat"]
            kept = [simplify(r, tolerance) for r in rings(lon[:], lat[:], lon.attrs, lat.attrs)]
            out.append(
                {
                    "code": code,
                    "name": name,
                    "rings": [np.round(r, 4).tolist() for r in kept if len(r) >= MIN_POINTS],
                }
            )
    v = version.decode() if isinstance(version, bytes) else str(version)
    return {
        "source": f"DCW-GMT {v} (The GMT Team, LGPL-3+), Debian package gmt-dcw",
        "countries": out,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src, dest = Path(argv[0]), Path(argv[1])
    if not src.exists():
        print(f"{src} is missing: install the Debian package gmt-dcw", file=sys.stderr)
        return 1
    data = outline(src)
    dest.write_text(json.dumps(data, separators=(",", ":")))
    points = sum(len(r) for c in data["countries"] for r in c["rings"])
    print(f"{dest}: {len(data['countries'])} countries, {points} points")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
