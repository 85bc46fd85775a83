"""A realistic grid and meter fleet for Uzbekistan, with known losses and theft.

    python -m loadtest grid --meters 20000 --gas-share 0.3 --out fleet/ [--seed 1]

writes ``grid.csv`` and ``meters.csv`` in the formats of DESIGN.md section 7 and
``ground_truth.json``:

- the network: republic → the 14 regions (12 regions, Karakalpakstan and Tashkent city,
  at their real centres, consumers in proportion to population) → districts → backbone
  substations → distribution substations → 10 kV feeders → transformers (50-150
  consumers) → consumer meters, coordinates scattered around their parents; a
  generation node feeds the backbone. Gas: gas distribution stations → segments → gas
  meters.
- balance meters at every backbone and distribution substation, feeder head and
  transformer, gas station and segment;
- technical losses (transformers 1.5-3.5 %, feeders 2-9 % growing with length) and
  theft at a known set of transformers: bypassed meters (registering almost nothing),
  tampered meters (registering 30-70 %, some raising tamper alarms), reversed meters,
  and illegal connections with no meter at all.

Each meter's consumption model (yearly energy, load shape) is derived from the seed
and its serial by the simulator (`loadtest/sim`), so the truth file lists only what is
unusual and stays small for millions of meters. Deterministic for a given seed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headend.store.imports import GRID_COLUMNS, METER_COLUMNS, OPTIONAL_METER_COLUMNS

# The 14 first-level divisions: (code, name, latitude, longitude, population in
# millions, about 2023). Centres are the capitals (Tashkent region: Nurafshon).
REGIONS = [
    ("QR", "Karakalpakstan", 42.46, 59.61, 2.0),
    ("AN", "Andijan", 40.78, 72.34, 3.3),
    ("BU", "Bukhara", 39.77, 64.42, 2.0),
    ("FA", "Fergana", 40.39, 71.78, 3.9),
    ("JI", "Jizzakh", 40.12, 67.84, 1.5),
    ("QA", "Kashkadarya", 38.86, 65.79, 3.5),
    ("XO", "Khorezm", 41.55, 60.63, 1.9),
    ("NG", "Namangan", 41.00, 71.67, 3.0),
    ("NW", "Navoiy", 40.10, 65.38, 1.0),
    ("SA", "Samarkand", 39.65, 66.96, 4.1),
    ("SU", "Surkhandarya", 37.22, 67.28, 2.8),
    ("SI", "Syrdarya", 40.49, 68.78, 0.9),
    ("TO", "Tashkent region", 41.04, 69.36, 3.0),
    ("TK", "Tashkent city", 41.31, 69.28, 3.0),
]

# The import formats (DESIGN.md section 7), as `headend grid|meters import` reads them.
GRID_HEADER = GRID_COLUMNS
METER_HEADER = [*METER_COLUMNS, *OPTIONAL_METER_COLUMNS]
ADDRESS = METER_HEADER.index("address")
# Listening meters (the head-end dials them) get loopback addresses the simulator can
# bind: 127.1.x.y, ports 10000-29999 (below Linux's ephemeral range).
LISTEN_PORTS = 20_000


@dataclass
class Node:
    node_id: str
    parent: str
    level: str
    commodity: str
    name: str
    admin: str
    lat: float
    lon: float


@dataclass
class Fleet:
    nodes: list[Node] = field(default_factory=list)
    meters: list[list[str]] = field(default_factory=list)
    truth: dict[str, Any] = field(default_factory=dict)


def _split(total: int, parts: int, rnd: random.Random) -> list[int]:
    """`total` into `parts` positive integers, roughly equal with some spread."""
    parts = max(1, min(parts, total)) if total > 0 else 1
    weights = [rnd.uniform(0.7, 1.3) for _ in range(parts)]
    s = sum(weights)
    out = [max(1, int(total * w / s)) for w in weights]
    while sum(out) > total and max(out) > 1:
        out[out.index(max(out))] -= 1
    i = 0
    while sum(out) < total:
        out[i % parts] += 1
        i += 1
    return out


class Generator:
    def __init__(
        self,
        meters: int,
        gas_share: float,
        seed: int,
        plain: bool,
        theft_share: float,
        *,
        regions: list[str] | None = None,
    ) -> None:
        known = [r[0] for r in REGIONS]
        wrong = sorted(set(regions or []) - set(known))
        if wrong:
            raise ValueError(f"unknown region(s) {', '.join(wrong)}: one of {', '.join(known)}")
        self.regions = [r for r in REGIONS if not regions or r[0] in regions]
        if meters < len(self.regions):
            raise ValueError(f"--meters must be at least {len(self.regions)} (one per region)")
        if not 0.0 <= gas_share < 1.0:
            raise ValueError("--gas-share must be in [0, 1)")
        self.n = meters
        self.gas_share = gas_share
        # A simulation's generator, not a secret's: keys are test keys by design.
        self.rnd = random.Random(seed)  # noqa: S311
        self.seed = seed
        self.plain = plain
        self.theft_share = theft_share
        self.fleet = Fleet()
        self.counter = {"E": 0, "G": 0, "B": 0}
        self.titles: set[bytes] = set()
        self.truth: dict[str, Any] = {
            "seed": seed,
            "generation": "",
            "thieves": [],
            "illegal": [],
            "theft_nodes": [],
            "technical_loss": {},
            "tamper_alarms": [],
        }

    # -- building blocks ---------------------------------------------------------------

    def node(
        self,
        node_id: str,
        parent: str,
        level: str,
        commodity: str,
        *,
        name: str,
        admin: str,
        lat: float,
        lon: float,
    ) -> Node:
        n = Node(node_id, parent, level, commodity, name, admin, round(lat, 5), round(lon, 5))
        self.fleet.nodes.append(n)
        return n

    def near(self, lat: float, lon: float, spread: float) -> tuple[float, float]:
        return lat + self.rnd.gauss(0, spread), lon + self.rnd.gauss(0, spread * 1.3)

    def meter(
        self, prefix: str, kind: str, role: str, node: Node, *, model: str, spread: float
    ) -> str:
        self.counter[prefix] += 1
        serial = f"{prefix}{self.counter[prefix]:09d}"
        account = f"ACC{self.counter[prefix]:09d}" if role == "consumer" else ""
        if self.plain:
            title = ek = ak = kek = ""
        else:
            maker = {"E": b"UZE", "G": b"UZG", "B": b"UZB"}[prefix]
            raw = maker + self.counter[prefix].to_bytes(5, "big")
            self.titles.add(raw)
            title = raw.hex().upper()
            ek = self.rnd.randbytes(16).hex().upper()
            ak = self.rnd.randbytes(16).hex().upper()
            # The master key (KEK) that new keys travel under: from the seed and serial,
            # so fleets of a seed stay as they were before meters had one.
            kek = (
                hashlib.blake2b(f"{self.seed}:{serial}".encode(), digest_size=16, person=b"kek")
                .hexdigest()
                .upper()
            )
        # The LLS secret (8 digits, as utilities set them); HLS uses the keys.
        password = f"{self.rnd.randrange(10**8):08d}"
        lat, lon = self.near(node.lat, node.lon, spread)
        self.fleet.meters.append(
            [
                serial,
                kind,
                role,
                node.node_id,
                account,
                model,
                title,
                ek,
                ak,
                password,
                f"{lat:.5f}",
                f"{lon:.5f}",
                "",
                kek,
                # No instrument transformers: the simulator's meters give primary values.
                "",
                "",
            ]
        )
        return serial

    # -- the network ---------------------------------------------------------------------

    def build(self) -> Fleet:
        rnd = self.rnd
        rep = self.node(
            "UZ",
            "",
            "republic",
            "any",
            name="Republic of Uzbekistan",
            admin="UZ",
            lat=41.3,
            lon=64.6,
        )
        gen = self.node(
            "UZ-GEN",
            rep.node_id,
            "generation",
            "electricity",
            name="Generation",
            admin="UZ",
            lat=41.0,
            lon=64.5,
        )
        self.truth["generation"] = gen.node_id
        self.meter("B", "electricity", "balance", gen, model="e3ph", spread=0.01)
        # Transmission from the power stations to the backbone substations.
        self.truth["technical_loss"][gen.node_id] = round(rnd.uniform(0.02, 0.03), 4)
        n_gas = round(self.n * self.gas_share)
        n_el = self.n - n_gas
        weights = [r[4] for r in self.regions]
        el = self._by_weight(n_el, weights)
        gas = self._by_weight(n_gas, weights) if n_gas else [0] * len(self.regions)
        for (code, name, lat, lon, _), ne, ng in zip(self.regions, el, gas, strict=True):
            region = self.node(
                f"UZ-{code}", rep.node_id, "region", "any", name=name, admin=code, lat=lat, lon=lon
            )
            if ne:
                self.electric_region(region, ne)
            if ng:
                self.gas_region(region, ng)
        self.truth["summary"] = {
            "consumer_meters": self.n,
            "gas_meters": n_gas,
            "electricity_meters": n_el,
            "nodes": len(self.fleet.nodes),
            "meters": len(self.fleet.meters),
            "thieves": len(self.truth["thieves"]),
            "illegal_connections": len(self.truth["illegal"]),
        }
        rnd.shuffle(self.truth["thieves"])  # no order to give the answers away
        self.truth["thieves"].sort(key=lambda t: t["serial"])
        self.fleet.truth = self.truth
        return self.fleet

    def _by_weight(self, total: int, weights: list[float]) -> list[int]:
        s = sum(weights)
        out = [int(total * w / s) for w in weights]
        for i in sorted(range(len(out)), key=lambda i: -weights[i])[: total - sum(out)]:
            out[i] += 1
        return out

    def electric_region(self, region: Node, consumers: int) -> None:
        rnd = self.rnd
        n_tr = max(1, math.ceil(consumers / rnd.uniform(85, 115)))
        per_tr = _split(consumers, n_tr, rnd)
        n_feeders = max(1, math.ceil(n_tr / rnd.uniform(6, 10)))
        n_dist = max(1, math.ceil(n_feeders / rnd.uniform(2.5, 4)))
        n_back = max(1, math.ceil(n_dist / rnd.uniform(2, 3.5)))
        n_districts = max(1, round(n_back / 1.5))
        code = region.admin
        districts = []
        for d in range(n_districts):
            lat, lon = self.near(region.lat, region.lon, 0.35)
            districts.append(
                self.node(
                    f"{region.node_id}-D{d + 1:02d}",
                    region.node_id,
                    "district",
                    "any",
                    name=f"{region.name} district {d + 1}",
                    admin=f"{code}-D{d + 1:02d}",
                    lat=lat,
                    lon=lon,
                )
            )
        tr_iter = iter(per_tr)
        feeder_sizes = _split(n_tr, n_feeders, rnd)
        dist_sizes = _split(n_feeders, n_dist, rnd)
        back_sizes = _split(n_dist, n_back, rnd)
        f_i = d_i = 0
        for b, n_d in enumerate(back_sizes):
            district = districts[b % n_districts]
            lat, lon = self.near(district.lat, district.lon, 0.08)
            back = self.node(
                f"{district.node_id}-BS{b + 1}",
                district.node_id,
                "backbone_substation",
                "electricity",
                name=f"PS-{code}-{b + 1} 220/110 kV",
                admin=district.admin,
                lat=lat,
                lon=lon,
            )
            self.meter("B", "electricity", "balance", back, model="e3ph", spread=0.001)
            self.truth["technical_loss"][back.node_id] = round(rnd.uniform(0.005, 0.01), 4)
            for _ in range(n_d):
                n_f = dist_sizes[d_i]
                d_i += 1
                lat, lon = self.near(back.lat, back.lon, 0.05)
                dist = self.node(
                    f"{back.node_id}-DS{d_i}",
                    back.node_id,
                    "distribution_substation",
                    "electricity",
                    name=f"PS-{code}-{d_i} 35/10 kV",
                    admin=district.admin,
                    lat=lat,
                    lon=lon,
                )
                self.meter("B", "electricity", "balance", dist, model="e3ph", spread=0.001)
                self.truth["technical_loss"][dist.node_id] = round(rnd.uniform(0.008, 0.015), 4)
                for _ in range(n_f):
                    n_t = feeder_sizes[f_i]
                    f_i += 1
                    self.feeder(dist, district, n_t, tr_iter, f_i)

    def feeder(self, dist: Node, district: Node, n_tr: int, sizes: Any, index: int) -> None:
        rnd = self.rnd
        # Long rural feeders lose more: loss grows with the transformers' spread.
        length_km = rnd.uniform(3, 25)
        spread = 0.004 + length_km / 111 / 3
        lat, lon = self.near(dist.lat, dist.lon, 0.02)
        feeder = self.node(
            f"{dist.node_id}-F{index}",
            dist.node_id,
            "feeder",
            "electricity",
            name=f"F-{index} 10 kV ({length_km:.0f} km)",
            admin=district.admin,
            lat=lat,
            lon=lon,
        )
        self.meter("B", "electricity", "balance", feeder, model="e3ph", spread=0.0005)
        self.truth["technical_loss"][feeder.node_id] = round(0.02 + 0.07 * (length_km - 3) / 22, 4)
        for t in range(n_tr):
            consumers = next(sizes)
            tlat, tlon = self.near(feeder.lat, feeder.lon, spread)
            tr = self.node(
                f"{feeder.node_id}-T{t + 1}",
                feeder.node_id,
                "transformer",
                "electricity",
                name=f"TP-{index}-{t + 1} 10/0.4 kV",
                admin=district.admin,
                lat=tlat,
                lon=tlon,
            )
            self.meter("B", "electricity", "balance", tr, model="e3ph", spread=0.0002)
            self.truth["technical_loss"][tr.node_id] = round(rnd.uniform(0.015, 0.035), 4)
            serials = [
                self.meter(
                    "E",
                    "electricity",
                    "consumer",
                    tr,
                    model="e3ph" if rnd.random() < 0.08 else "e1ph",
                    spread=0.003,
                )
                for _ in range(consumers)
            ]
            if rnd.random() < self.theft_share * 10:  # about theft_share x 10 of transformers
                self.theft(tr, serials)

    def theft(self, tr: Node, serials: list[str]) -> None:
        rnd = self.rnd
        self.truth["theft_nodes"].append(tr.node_id)
        thieves = rnd.sample(serials, max(1, round(len(serials) * rnd.uniform(0.05, 0.15))))
        for s in thieves:
            kind = rnd.choices(["bypass", "tamper", "reverse"], weights=[0.4, 0.5, 0.1])[0]
            factor = {
                "bypass": rnd.uniform(0.0, 0.05),
                "tamper": rnd.uniform(0.3, 0.7),
                "reverse": -1.0,
            }[kind]
            entry = {"serial": s, "node": tr.node_id, "type": kind, "factor": round(factor, 3)}
            if kind == "tamper" and rnd.random() < 0.5:
                entry["alarm"] = rnd.choice(["magnetic-field-detected", "terminal-cover-opened"])
                self.truth["tamper_alarms"].append(s)
            self.truth["thieves"].append(entry)
        if rnd.random() < 0.5:
            self.truth["illegal"].append(
                {"node": tr.node_id, "kw": round(rnd.uniform(1.0, 4.0), 2)}
            )

    def gas_region(self, region: Node, consumers: int) -> None:
        rnd = self.rnd
        n_seg = max(1, math.ceil(consumers / rnd.uniform(150, 250)))
        n_sta = max(1, math.ceil(n_seg / rnd.uniform(6, 12)))
        seg_sizes = _split(consumers, n_seg, rnd)
        sta_sizes = _split(n_seg, n_sta, rnd)
        it = iter(seg_sizes)
        s_i = 0
        for st in range(n_sta):
            lat, lon = self.near(region.lat, region.lon, 0.3)
            station = self.node(
                f"{region.node_id}-GS{st + 1}",
                region.node_id,
                "gas_station",
                "gas",
                name=f"GRS-{region.admin}-{st + 1}",
                admin=region.admin,
                lat=lat,
                lon=lon,
            )
            self.meter("B", "gas", "balance", station, model="gas-g4", spread=0.0005)
            self.truth["technical_loss"][station.node_id] = round(rnd.uniform(0.005, 0.02), 4)
            for _ in range(sta_sizes[st]):
                s_i += 1
                lat, lon = self.near(station.lat, station.lon, 0.05)
                seg = self.node(
                    f"{station.node_id}-S{s_i}",
                    station.node_id,
                    "gas_segment",
                    "gas",
                    name=f"Segment {s_i}",
                    admin=region.admin,
                    lat=lat,
                    lon=lon,
                )
                self.meter("B", "gas", "balance", seg, model="gas-g4", spread=0.0005)
                self.truth["technical_loss"][seg.node_id] = round(rnd.uniform(0.01, 0.03), 4)
                serials = [
                    self.meter("G", "gas", "consumer", seg, model="gas-g4", spread=0.004)
                    for _ in range(next(it))
                ]
                if rnd.random() < self.theft_share * 5:
                    s = rnd.choice(serials)
                    self.truth["thieves"].append(
                        {
                            "serial": s,
                            "node": seg.node_id,
                            "type": "tamper",
                            "factor": round(rnd.uniform(0.3, 0.6), 3),
                            "alarm": "magnetic-field-detected",
                        }
                    )
                    self.truth["tamper_alarms"].append(s)


def write(fleet: Fleet, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "grid.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(GRID_HEADER)
        for n in fleet.nodes:
            w.writerow(
                [
                    n.node_id,
                    n.parent,
                    n.level,
                    n.commodity,
                    n.name,
                    n.admin,
                    f"{n.lat:.5f}",
                    f"{n.lon:.5f}",
                ]
            )
    with open(out / "meters.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(METER_HEADER)
        w.writerows(fleet.meters)
    (out / "ground_truth.json").write_text(json.dumps(fleet.truth, indent=1) + "\n")
    write_centres(fleet, out / "service_centres.csv")


def write_centres(fleet: Fleet, path: Path) -> None:
    """A meter service centre for every two districts of a region (headend centres
    import)."""
    by_region: dict[str, list[Node]] = {}
    for n in fleet.nodes:
        if n.level == "district":
            by_region.setdefault(n.parent, []).append(n)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["centre_id", "name", "districts", "phone"])
        for r, (region, districts) in enumerate(by_region.items()):
            for k in range(0, len(districts), 2):
                pair = districts[k : k + 2]
                w.writerow(
                    [
                        f"SC-{region}-{k // 2 + 1}",
                        f"{pair[0].name} service centre",
                        ";".join(d.node_id for d in pair),
                        f"+998 71 {200 + r:03d} {k // 2:02d} 00",
                    ]
                )


def generate(
    meters: int,
    gas_share: float,
    out: Path,
    *,
    seed: int = 1,
    plain: bool = False,
    theft_share: float = 0.03,
    listening: float = 0.0,
    regions: list[str] | None = None,
) -> Fleet:
    """`listening`: the share of consumer meters that listen for the head-end instead of
    connecting to it (every fourth of them speaks HDLC); they get an `address`.
    `regions`: only these (codes, "SA"); the others have no grid and no meters."""
    fleet = Generator(meters, gas_share, seed, plain, theft_share, regions=regions).build()
    if listening > 0:
        listen(fleet, listening, seed)
    write(fleet, out)
    return fleet


def listen(fleet: Fleet, share: float, seed: int) -> None:
    """Gives a share of the consumer meters loopback addresses to listen on."""
    rnd = random.Random(seed ^ 0x11573)  # noqa: S311 - a simulation's choice
    k = 0
    for m in fleet.meters:
        if m[2] != "consumer" or rnd.random() >= share:
            continue
        host = k // LISTEN_PORTS
        ip = f"127.1.{host // 250}.{host % 250 + 1}"
        port = 10_000 + k % LISTEN_PORTS
        m[ADDRESS] = f"hdlc://{ip}:{port}/1/17" if k % 4 == 3 else f"{ip}:{port}"
        k += 1
