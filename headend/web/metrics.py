"""`/metrics` in the Prometheus text exposition format (version 0.0.4), from the store's
status: sessions, pushes and readings (counters per worker), ingest, spool backlog,
rejects by reason, command transitions and latency, meters online, HTTP requests."""

from __future__ import annotations

from typing import Any


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _link(o: _Out, link: dict[str, Any]) -> None:
    """The link to the peers (region nodes and the centre): state, lag, backlog."""
    peers = link["peers"]
    o.metric(
        "headend_link_connected",
        "gauge",
        "1 while the peer's heartbeats arrive.",
        [({"peer": p["peer"]}, 1 if p["connected"] else 0) for p in peers],
    )
    o.metric(
        "headend_link_last_contact_seconds",
        "gauge",
        "Unix time of the peer's last heartbeat.",
        [({"peer": p["peer"]}, p["last_contact"] or 0) for p in peers],
    )
    o.metric(
        "headend_link_lag_seconds",
        "gauge",
        "How far behind the peer's records this node's copy is.",
        [({"peer": p["peer"]}, p["lag_s"]) for p in peers],
    )
    o.metric(
        "headend_link_lag_rows",
        "gauge",
        "Rows the peer sent that this node has not applied yet.",
        [({"peer": p["peer"]}, p["lag_rows"]) for p in peers],
    )
    o.metric(
        "headend_link_applied_rows_total",
        "counter",
        "Rows of the peer's records applied here.",
        [({"peer": p["peer"]}, p["applied_rows_total"]) for p in peers],
    )
    o.metric(
        "headend_link_rejected_records_total",
        "counter",
        "The peer's records refused here since the store started.",
        [({"peer": p["peer"]}, p["rejected_records"]) for p in peers],
    )
    o.metric(
        "headend_link_unconfirmed_bytes",
        "gauge",
        "Bytes sent to the peer that it has not confirmed (held on disk).",
        [({"peer": p["peer"]}, p["unconfirmed_bytes"]) for p in peers],
    )
    o.metric(
        "headend_link_outbox_bytes",
        "gauge",
        "Bytes in the outbox not yet in this node's stream.",
        [({}, link["outbox_bytes"])],
    )
    o.metric(
        "headend_link_alarm",
        "gauge",
        "1 while the link's backlog is over its configured size or age.",
        [({}, 1 if link["alarm"] else 0)],
    )


def render(
    status: dict[str, Any], online: dict[str, int], requests: dict[tuple[str, int], int]
) -> str:
    o = _Out()
    workers = status["workers"]
    o.metric("headend_up", "gauge", "1 while the store process answers.", [({}, 1)])
    o.metric(
        "headend_uptime_seconds",
        "gauge",
        "Seconds since the store started.",
        [({}, status["uptime_s"])],
    )
    o.metric(
        "headend_workers_connected",
        "gauge",
        "Workers connected to the store.",
        [({}, sum(1 for w in workers if w["connected"]))],
    )
    o.metric(
        "headend_sessions",
        "gauge",
        "Open meter connections per worker.",
        [({"worker": str(w["worker"])}, w["sessions"]) for w in workers],
    )
    o.metric(
        "headend_meters_online",
        "gauge",
        "Meters identified on an open connection.",
        [({}, sum(online.values()))],
    )
    for key, name, help_ in (
        ("pushes", "headend_pushes_total", "Pushes decoded (data and event notifications)."),
        ("readings", "headend_readings_total", "Readings decoded."),
        ("events", "headend_events_total", "Meter events decoded."),
        ("connections", "headend_connections_total", "Meter connections accepted."),
    ):
        o.metric(
            name,
            "counter",
            help_ + " Per worker, since the worker started.",
            [({"worker": str(w["worker"])}, w["totals"].get(key, 0)) for w in workers],
        )
    o.metric(
        "headend_pushes_per_second",
        "gauge",
        "Pushes per second over the last report.",
        [({}, status["pushes_per_s"])],
    )
    ingest = status["ingest"]
    o.metric(
        "headend_ingest_rows_total",
        "counter",
        "Rows written to ClickHouse, per table.",
        [({"table": t}, n) for t, n in sorted(ingest["rows_total"].items())],
    )
    o.metric(
        "headend_ingest_rows_per_second",
        "gauge",
        "Rows per second in the last ingest rounds.",
        [({}, ingest["rows_per_s"])],
    )
    o.metric(
        "headend_ingest_failing",
        "gauge",
        "1 while inserts into ClickHouse fail.",
        [({}, 1 if ingest.get("error") else 0)],
    )
    o.metric(
        "headend_spool_backlog_bytes",
        "gauge",
        "Spooled bytes not yet in ClickHouse.",
        [({}, status["spool_backlog_bytes"])],
    )
    o.metric(
        "headend_spool_full_workers",
        "gauge",
        "Workers that cannot write their spool (a full disk) and so read no meter.",
        [({}, status.get("spool_full_workers", 0))],
    )
    o.metric(
        "headend_rejects_total",
        "counter",
        "Input refused, by reason.",
        [({"reason": r}, n) for r, n in sorted(status["rejects"].items())],
    )
    src = status.get("sources", {})
    o.metric(
        "headend_connections_untrusted",
        "gauge",
        "Meter-port connections on which no meter has been identified yet.",
        [({}, src.get("untrusted_connections", 0))],
    )
    o.metric(
        "headend_sources_banned",
        "gauge",
        "Source addresses (and subnets) refused for passing a limit, summed over workers.",
        [({}, src.get("banned", 0))],
    )
    cmd = status["commands"]
    o.metric(
        "headend_commands_pending",
        "gauge",
        "Commands queued or running.",
        [({}, cmd["pending"])],
    )
    o.metric(
        "headend_command_transitions_total",
        "counter",
        "Command state changes since the store started, by new state (done, failed, ...).",
        [({"state": s}, n) for s, n in sorted(cmd["transitions"].items())],
    )
    o.metric(
        "headend_command_transitions_by_kind_total",
        "counter",
        "Command state changes since the store started, by kind (rekey, firmware, ...) "
        "and new state.",
        [({"kind": k, "state": s}, n) for k, s, n in cmd.get("transitions_by_kind", [])],
    )
    waves = status.get("waves", [])
    o.metric(
        "headend_wave_meters",
        "gauge",
        "Meters of each recent wave (key rotation, firmware) by outcome: done, failed, "
        "expired, verified (activation waiting), running, to_go.",
        [
            ({"wave": w["wave_id"], "kind": w["kind"], "state": w["state"], "outcome": o_}, n)
            for w in waves
            for o_, n in sorted(
                {
                    **w["outcomes"],
                    "running": w["running"],
                    **({"to_go": w["to_go"]} if w.get("to_go") is not None else {}),
                }.items()
            )
        ],
    )
    o.metric(
        "headend_command_round_trip_seconds",
        "gauge",
        "Command round trip (queued to outcome), recent quantiles.",
        [
            ({"quantile": q}, v)
            for q, v in (("0.5", cmd["p50_s"]), ("0.99", cmd["p99_s"]))
            if v is not None
        ],
    )
    o.metric(
        "headend_polled_readings_total",
        "counter",
        "Readings stored from polled profiles.",
        [({}, cmd.get("polled_readings", 0))],
    )
    link = status.get("link")
    if link:
        _link(o, link)
    o.metric(
        "headend_http_requests_total",
        "counter",
        "HTTP requests by route and status.",
        [({"route": r, "status": str(s)}, n) for (r, s), n in sorted(requests.items())],
    )
    return o.text()
