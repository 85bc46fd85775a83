"""A wave during a load run (``loadtest run --wave rekey|firmware:BYTES``): new keys
or a firmware image for every simulated meter, one wave per region, started while the
fleet pushes. The report says how long each took, what each meter's outcome was, and
the run's own figures say whether a reading was lost meanwhile (a rotated meter's
pushes must still be deciphered, under its new keys)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from loadtest.firmware import make_image


def parse(spec: str) -> tuple[str, int]:
    """'rekey' or 'firmware[:BYTES]' (default 64 KiB images)."""
    kind, _, size = spec.partition(":")
    if kind not in ("rekey", "firmware"):
        raise ValueError(f"--wave {spec!r}: rekey or firmware[:BYTES]")
    if kind == "rekey" and size:
        raise ValueError("--wave rekey takes no size")
    return kind, int(size or 65_536)


def sim_faults(spec: str) -> list[str]:
    """'refuse=0.02,verify=0.02,drop=0.05' as simulator options."""
    flags = {"refuse": "--refuse-keys", "verify": "--fail-verify", "drop": "--drop-transfer"}
    out: list[str] = []
    for part in filter(None, spec.split(",")):
        name, _, share = part.partition("=")
        if name not in flags:
            raise ValueError(f"--wave-faults {part!r}: refuse, verify or drop")
        out += [flags[name], str(float(share))]
    return out


class WaveRun:
    """The waves of one load run, driven through the head-end's admin socket."""

    def __init__(
        self, h: Any, root: Path, spec: str, concurrency: int, skip: tuple[str, ...] = ()
    ) -> None:
        self.h, self.root = h, root
        # Meters no simulator runs (the driver's latency probe): their commands are
        # cancelled, so the waves can end.
        self.skip = skip
        self.kind, self.size = parse(spec)
        self.concurrency = concurrency
        self.waves: dict[str, dict[str, Any]] = {}
        self.started = 0.0
        self.finished: dict[str, float] = {}
        self.image = ""

    def start(self) -> None:
        params: dict[str, Any] = {"concurrency": self.concurrency, "min_sample": 50}
        if self.kind == "firmware":
            path = make_image(self.root / "image.bin", self.size, seed=7)
            out = self.h.cli("firmware", "add", str(path), "--identifier", "LOAD-9.9.9")
            self.image = out.split()[0]
            params["image"] = self.image
        rows = self.h.admin(
            "query", query="SELECT DISTINCT region FROM ami.meters WHERE region != ''"
        )["rows"]
        regions = [str(r[0]) for r in rows]
        self.started = time.monotonic()
        for region in sorted(regions):
            w = self.h.admin(
                "waves.start", kind=self.kind, region=region, params=params, reason="load run"
            )
            self.waves[w["wave_id"]] = w

    def poll(self) -> bool:
        """True once every wave has ended."""
        for serial in self.skip:
            for c in self.h.admin("commands", serial=serial)["pending"]:
                if c["args"].get("wave") in self.waves and c["state"] != "running":
                    self.h.admin("cancel", id=c["command_id"])
        for wid in self.waves:
            if wid in self.finished:
                continue
            w = self.h.admin("waves.show", id=wid)
            self.waves[wid] = w
            if w["state"] != "running":
                self.finished[wid] = time.monotonic()
        return len(self.finished) == len(self.waves)

    def report(self) -> dict[str, Any]:
        self.poll()
        outcomes: dict[str, int] = {}
        for w in self.waves.values():
            for k, n in w["outcomes"].items():
                outcomes[k] = outcomes.get(k, 0) + n
        meters = sum(int(w["meters"]) for w in self.waves.values())
        ended = max(self.finished.values()) if len(self.finished) == len(self.waves) else None
        took = round(ended - self.started, 1) if ended is not None else None
        return {
            "kind": self.kind,
            "image_bytes": self.size if self.kind == "firmware" else None,
            "waves": len(self.waves),
            "concurrency_per_wave": self.concurrency,
            "meters": meters,
            "outcomes": outcomes,
            "states": sorted({w["state"] for w in self.waves.values()}),
            "all_ended_s": took,
            "meters_per_s": round((outcomes.get("done", 0) + outcomes.get("failed", 0)) / took, 1)
            if took
            else None,
            "slowest_wave_s": took,
        }
