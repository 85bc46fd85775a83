"""The OpenAPI 3.1 description of the HTTP API, served at /api/openapi.json. A test
checks that every route is described and every described path is routed."""

from __future__ import annotations

from typing import Any

from headend.web import reports, workorders


def _q(name: str, desc: str, type_: str = "string", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": desc,
        "schema": {"type": type_, **extra},
    }


def _p(name: str, desc: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": desc,
        "schema": {"type": "string"},
    }


def _get(
    summary: str,
    params: list[dict[str, Any]] | None = None,
    *,
    schema: str = "Object",
    content: str = "application/json",
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": "OK",
            "content": {
                content: {
                    "schema": (
                        {"$ref": f"#/components/schemas/{schema}"}
                        if content == "application/json"
                        else {"type": "string"}
                    )
                }
            },
        },
        "400": {"$ref": "#/components/responses/BadRequest"},
        "401": {"$ref": "#/components/responses/Unauthorized"},
    }
    return {"get": {"summary": summary, "parameters": params or [], "responses": responses}}


FROM = _q("from", "start: ISO date or date-time (Tashkent time unless given) or Unix seconds")
TO = _q("to", "end (exclusive), same forms as from; default now")
LIMIT = _q("limit", "most rows to return", "integer", minimum=1, maximum=10_000)
LEVEL = _q(
    "level",
    "backbone_substation, distribution_substation, feeder, transformer, "
    "gas_station, gas_segment; for balances also republic, region, district",
)
SERIAL = _p("serial", "the meter's serial number")
WRITE: list[dict[str, list[str]]] = [{"bearer": []}, {"session": [], "csrf": []}]
NAME = _p("name", "the user's name")


def _post(
    summary: str,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    ok_status: str = "200",
    method: str = "post",
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": WRITE,
        "parameters": params or [],
        "responses": {
            ok_status: {"description": "done"},
            "400": {"$ref": "#/components/responses/BadRequest"},
            "401": {"$ref": "#/components/responses/Unauthorized"},
            "403": {"$ref": "#/components/responses/Forbidden"},
        },
    }
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object", "properties": body}}},
        }
    return {method: op}


STRINGS = {"type": "array", "items": {"type": "string"}}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "headend API",
        "version": "1",
        "description": (
            "The smart-meter head-end's grid, balances, meters, alarms, commands and "
            "billing. Times are Unix seconds or ISO text; energy in kWh, gas in m³. Every "
            "route but /api/login and this description is for a named person: a session "
            "cookie from POST /api/login (its writes also send the X-CSRF-Token header "
            "that login and /api/me return) or a personal API token (Authorization: "
            "Bearer hk_...; headend users token). Each person sees and acts within "
            "their regions and roles (viewer, operator, billing, service, analyst, "
            "admin); 403 names what is missing. Every write and login is an audit row."
        ),
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "personal token"},
            "session": {"type": "apiKey", "in": "cookie", "name": "headend_session"},
            "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"},
        },
        "schemas": {
            "Object": {"type": "object"},
            "Error": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            },
            "Figures": {
                "type": "object",
                "properties": {
                    "input": {"type": "number"},
                    "output": {"type": "number"},
                    "loss": {"type": "number"},
                    "loss_pct": {"type": ["number", "null"]},
                    "completeness": {"type": ["number", "null"]},
                    "volume": {
                        "type": "string",
                        "description": "gas: the volume the figures are in (corrected, "
                        "uncorrected or mixed)",
                    },
                },
            },
            "Node": {
                "type": "object",
                "properties": {
                    "node_id": {"type": "string"},
                    "parent_id": {"type": ["string", "null"]},
                    "level": {"type": "string"},
                    "commodity": {"type": "string"},
                    "name": {"type": "string"},
                    "admin_unit": {"type": "string"},
                    "lat": {"type": "number"},
                    "lon": {"type": "number"},
                    "children": {"type": "integer"},
                    "consumers": {"type": "integer"},
                    "meters": {"type": "integer"},
                    "online": {"type": "integer"},
                    "today": {
                        "type": "object",
                        "additionalProperties": {"$ref": "#/components/schemas/Figures"},
                    },
                    "load": {
                        "type": "object",
                        "description": "energy (kWh) or volume (m³) through the node in "
                        "the latest measured hour of the last three, i.e. average kW or m³/h",
                        "additionalProperties": {"type": "number"},
                    },
                },
            },
            "Nodes": {
                "type": "object",
                "properties": {
                    "day": {"type": "string"},
                    "now": {"type": "number"},
                    "nodes": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
                },
            },
            "Account": {
                "type": "object",
                "required": ["account_id", "debt"],
                "properties": {
                    "account_id": {"type": "string"},
                    "debt": {"type": "number"},
                    "overdue_since": {"type": ["string", "null"], "format": "date"},
                    "protected": {"type": "boolean"},
                    "note": {"type": "string"},
                },
            },
            "CommandRequest": {
                "type": "object",
                "required": ["serial", "kind"],
                "properties": {
                    "serial": {"type": "string"},
                    "kind": {
                        "type": "string",
                        "enum": ["read", "disconnect", "reconnect", "clock", "profile"],
                    },
                    "args": {
                        "type": "object",
                        "description": "read: {objects: [[class, obis, attribute], ...]}; "
                        "profile: {from, to} (Unix seconds); clock: {threshold}",
                    },
                    "reason": {"type": "string"},
                    "wait": {"type": "number", "description": "seconds to wait for the outcome"},
                    "expires_in": {"type": "number"},
                },
            },
        },
        "responses": {
            "BadRequest": {
                "description": "what was wrong with the request",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
            "Forbidden": {
                "description": "the person lacks the role or the region (the error says which)",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
            "Unauthorized": {
                "description": "the bearer token is missing or wrong",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        },
    },
    "paths": {
        "/healthz": _get("200 when ingest works and every worker is connected, else 503"),
        "/metrics": _get("Prometheus metrics", content="text/plain"),
        "/api/openapi.json": _get("this description"),
        "/api/summary": _get(
            "the republic today: meters online, consumers, energy in, "
            "out and lost, load, ingest rates, command statistics"
        ),
        "/api/link": _get(
            "this node's role and regions, and its link to its peers (region nodes and the "
            "centre): connected, last contact, lag in seconds and rows, unconfirmed backlog, "
            "alarm; link is null on a standalone node"
        ),
        "/api/nodes": _get(
            "grid nodes with coordinates, today's balance, load, consumers and meters online",
            [_q("level", "only this level"), _q("parent", "only children of this node")],
            schema="Nodes",
        ),
        "/api/nodes/{node_id}": _get(
            "one node, the path to it and its children", [_p("node_id", "grid node id")]
        ),
        "/api/nodes/{node_id}/meters": _get(
            "the meters attached to a node, with today's consumption and suspicion score",
            [_p("node_id", "grid node id")],
        ),
        "/api/balances": _get(
            "balances per node (network level) or per administrative unit "
            "and link, summed over periods in Tashkent time",
            [
                LEVEL,
                _q("period", "hour, day, month or year"),
                FROM,
                TO,
                _q("node", "one node (or administrative unit prefix)"),
            ],
        ),
        "/api/losses": _get(
            "nodes ranked by loss, where completeness is high enough, with "
            "the loss % of the period before; default today so far",
            [
                LEVEL,
                _q("period", "the last whole hour, day, month or year"),
                FROM,
                TO,
                _q("top", "how many", "integer"),
                _q("min_completeness", "0..1, default 0.9", "number"),
            ],
        ),
        "/api/anomalies": _get(
            "suspect consumers under lossy transformers with the evidence", [LIMIT]
        ),
        "/api/alarms": _get("recent tamper and power events, newest first", [FROM, TO, LIMIT]),
        "/api/health": _get(
            "fleet health: offline meters per region, clock checks, alarms by kind, rejected input"
        ),
        "/api/meters/{serial}": _get("a meter and its queued commands", [SERIAL]),
        "/api/meters/{serial}/readings": _get(
            "a meter's readings, newest first", [SERIAL, FROM, TO, LIMIT]
        ),
        "/api/meters/{serial}/events": _get(
            "a meter's events, newest first", [SERIAL, FROM, TO, LIMIT]
        ),
        "/api/meters/{serial}/commands": _get("a meter's commands and outcomes", [SERIAL, LIMIT]),
        "/api/commands": {
            **_get(
                "the command queue (disconnect/reconnect and reads) and recent outcomes",
                [_q("serial", "one meter"), _q("kind", "comma-separated kinds"), LIMIT],
            ),
            "post": {
                "summary": "queue a command for a meter, or a list of commands (a batch, "
                "queued without waiting); the operator role, meters in the person's regions",
                "security": WRITE,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/CommandRequest"},
                                    {
                                        "type": "array",
                                        "maxItems": 10_000,
                                        "items": {"$ref": "#/components/schemas/CommandRequest"},
                                    },
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "finished within `wait`: done, failed, ..."},
                    "202": {"description": "queued (a batch: {queued, rejected: []})"},
                    "207": {
                        "description": "a batch with some commands rejected, each with "
                        "its index and reason"
                    },
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "404": {"description": "unknown meter"},
                },
            },
        },
        "/api/billing/status": _get(
            "what the disconnection policy will do per meter and why",
            [_q("account", "one account"), _q("all", "true: also meters it leaves alone")],
        ),
        "/api/billing/accounts": {
            "post": {
                "summary": "debts and payments from the billing system (needs the token); "
                "a policy pass follows at once",
                "security": WRITE,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Account"},
                                    },
                                    {
                                        "type": "object",
                                        "properties": {
                                            "accounts": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Account"},
                                            }
                                        },
                                    },
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "every account loaded"},
                    "207": {"description": "some loaded, the others rejected with reasons"},
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                },
            },
        },
        "/api/billing/payments": {
            "post": {
                "summary": "payments as records (billing role): a list of {payment_id, "
                "account_id, amount, paid_at} (or {payments: [...]}); a payment id sent "
                "again with the same values is counted once (repeated), with other values "
                "rejected; a policy pass follows at once",
                "security": WRITE,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "payment_id": {"type": "string"},
                                        "account_id": {"type": "string"},
                                        "amount": {"type": "number", "exclusiveMinimum": 0},
                                        "paid_at": {"type": "string"},
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "every payment loaded or already recorded"},
                    "207": {"description": "some loaded, the others rejected with reasons"},
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "403": {"$ref": "#/components/responses/Forbidden"},
                },
            },
        },
        "/api/login": {
            "post": {
                "summary": "log in: sets the session cookie, returns the CSRF token that "
                "writes send; failures are slowed and audited",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["name", "password"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "password": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "logged in: {user, csrf}"},
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                },
            }
        },
        "/api/logout": _post("end the session"),
        "/api/me": _get("who is logged in (name, roles, regions) and the session's CSRF token"),
        "/api/users": {
            **_get("every account with its live tokens (admin)"),
            **_post(
                "add an account (admin)",
                {
                    "name": {"type": "string"},
                    "roles": STRINGS,
                    "regions": STRINGS,
                    "password": {"type": "string"},
                    "display_name": {"type": "string"},
                },
                ok_status="201",
            ),
        },
        "/api/users/{name}": _post(
            "change an account's roles, regions, display name, or disable it (admin)",
            {
                "roles": STRINGS,
                "regions": STRINGS,
                "disabled": {"type": "boolean"},
                "display_name": {"type": "string"},
            },
            [NAME],
        ),
        "/api/users/{name}/password": _post(
            "set a password (one's own, or anyone's as admin); ends the account's sessions",
            {"password": {"type": "string"}},
            [NAME],
        ),
        "/api/users/{name}/tokens": _post(
            "a new personal API token, shown once (one's own, or anyone's as admin)",
            {"label": {"type": "string"}, "expires_in": {"type": "number"}},
            [NAME],
            ok_status="201",
        ),
        "/api/tokens/{token_id}": _post(
            "revoke an API token (one's own, or anyone's as admin)",
            None,
            [_p("token_id", "the token's id")],
            method="delete",
        ),
        "/api/audit": _get(
            "the audit trail, newest first (admin)",
            [
                _q("user", "one person"),
                _q("action", "e.g. command, batch, login, user.add"),
                _q("since", "ISO time or Unix seconds"),
                LIMIT,
            ],
        ),
        "/api/approvals": _get(
            "requests waiting for a second person (four eyes): one's own, and those "
            "within one's regions"
        ),
        "/api/approvals/{approval_id}/approve": _post(
            "approve, and so run, a request: a different person with the role it needs "
            "(operator for commands, admin for keys) and every region it touches",
            {"note": {"type": "string"}},
            [_p("approval_id", "the request's id")],
        ),
        "/api/approvals/{approval_id}/reject": _post(
            "reject a request (or withdraw one's own)",
            {"note": {"type": "string"}},
            [_p("approval_id", "the request's id")],
        ),
        "/api/waves": {
            **_get(
                "key rotations and firmware upgrades over regions' meters, and where each "
                "stands (meters done, failed, to go)"
            ),
            "post": _post(
                "start a wave (admin, in the person's regions): kind rekey or firmware, "
                "region, params (concurrency, max_failure_rate, min_sample, expire, under; "
                "firmware: image, models, activate_at), reason",
                {
                    "kind": {"type": "string", "enum": ["rekey", "firmware"]},
                    "region": {"type": "string"},
                    "params": {"type": "object"},
                    "reason": {"type": "string"},
                },
                ok_status="201",
            )["post"],
        },
        "/api/waves/{wave_id}/stop": _post(
            "stop a running wave (admin): meters not yet started are not asked",
            {"why": {"type": "string"}},
            [_p("wave_id", "the wave's id")],
        ),
        "/api/waves/{wave_id}/resume": _post(
            "go on with a stopped or halted wave (admin)",
            None,
            [_p("wave_id", "the wave's id")],
        ),
        "/api/meters/{serial}/keys": _post(
            "new keys for a meter (admin): wrapped under the master key at once, stored "
            "when a second admin approves",
            {"ek": {"type": "string"}, "ak": {"type": "string"}},
            [SERIAL],
            ok_status="202",
        ),
        **workorders.spec(_get, _post, _q, _p),
        **reports.spec(_get, _q),
    },
}
