"""The map's country outline from the Digital Chart of the World (tools/outline.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from headend.config import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tools"))
import outline


def test_rings_are_split_at_the_marks_and_scaled() -> None:
    """Two rings: DCW starts each with lon 65535; degrees = min + value / scale."""
    attrs_lon = {"min": [60.0], "scale": [100.0]}
    attrs_lat = {"min": [40.0], "scale": [10.0]}
    lon = np.array([65535, 0, 100, 100, 0, 65535, 50, 60, 60, 50, 50], dtype=np.uint16)
    lat = np.array([0, 0, 0, 10, 10, 0, 5, 5, 6, 6, 5], dtype=np.uint16)
    got = outline.rings(lon, lat, attrs_lon, attrs_lat)
    assert [r.tolist() for r in got] == [
        [[40.0, 60.0], [40.0, 61.0], [41.0, 61.0], [41.0, 60.0]],
        [[40.5, 60.5], [40.5, 60.6], [40.6, 60.6], [40.6, 60.5], [40.5, 60.5]],
    ]
    with pytest.raises(ValueError, match="differ in length"):
        outline.rings(lon, lat[:-1], attrs_lon, attrs_lat)


def test_simplify_drops_what_the_map_cannot_show() -> None:
    # A square's sides with points a thousandth of a degree off the line.
    side = [[0.0, x / 10] for x in range(11)] + [[1.0, 1.0]]
    pts = np.array(side) + np.array([[0.0005 * (i % 2), 0.0] for i in range(len(side))])
    kept = outline.simplify(pts, 0.01)
    assert kept.tolist() == [pts[0].tolist(), pts[-2].tolist(), pts[-1].tolist()]
    assert len(outline.simplify(pts, 0.0)) == len(pts)


DCW = Path("/usr/share/gmt-dcw/dcw-gmt.nc")


@pytest.mark.skipif(not DCW.exists(), reason="gmt-dcw is not installed (make build installs it)")
def test_uzbekistan_from_the_installed_dcw(tmp_path: Path) -> None:
    out = tmp_path / "outline.json"
    assert outline.main([str(DCW), str(out)]) == 0
    data = json.loads(out.read_text())
    assert "gmt-dcw" in data["source"]
    uz = next(c for c in data["countries"] if c["code"] == "UZ")
    main = np.array(max(uz["rings"], key=len))
    # Its extremes: 37.18-45.61 N, 56.00-73.13 E.
    assert main[:, 0].min() == pytest.approx(37.18, abs=0.02)
    assert main[:, 0].max() == pytest.approx(45.61, abs=0.02)
    assert main[:, 1].min() == pytest.approx(56.00, abs=0.02)
    assert main[:, 1].max() == pytest.approx(73.13, abs=0.02)
    assert 500 < len(main) < 3000
    assert {c["code"] for c in data["countries"]} == {"UZ", "KZ", "KG", "TJ", "TM", "AF"}
