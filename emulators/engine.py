"""The schema-driven emulator: arena code (it runs in the gym's sandbox) that makes any tool doc stateful.

A tool's name says what it does to which kind of entity (`create_ticket`, `get_ticket`, `list_tickets`,
`close_ticket`, `edit_ticket`, ...). Entities live in the episode's SQLite state, so what a create, update,
delete, send or book call writes is what a later get, list or search call returns, with consistent ids.
Answers are shaped by the tool's declared output schema. Verbs the engine does not know are recorded as
actions and answered with a deterministic, schema-conforming result.

This file is read as text and shipped inside each emulated arena's `implementation`; it imports nothing
the sandbox forbids, and `TOOLS` (name -> doc) is appended by `emulators.compile`.
"""

import json

CREATE = {"create", "add", "new", "post", "book", "send", "make", "register", "upload", "insert", "open", "submit", "place", "schedule", "reserve", "buy", "purchase", "publish", "follow", "mkdir", "touch", "write"}
GET = {"get", "fetch", "read", "view", "show", "retrieve", "describe", "check", "display", "lookup", "cat", "load"}
LIST = {"list", "search", "find", "query", "browse", "ls", "filter", "all"}
UPDATE = {"update", "edit", "modify", "set", "change", "rename", "move", "resolve", "assign", "mark", "adjust", "toggle", "fill", "lock", "unlock", "start", "stop", "activate", "approve"}
DELETE = {"delete", "remove", "cancel", "close", "archive", "unfollow", "rm", "revoke", "end", "drop"}
STATUS_AFTER = {"cancel": "cancelled", "close": "closed", "archive": "archived", "resolve": "resolved", "approve": "approved", "revoke": "revoked", "end": "ended", "lock": "locked", "unlock": "unlocked", "start": "started", "stop": "stopped", "activate": "active"}
SOFT_DELETE = {"cancel", "close", "archive", "revoke", "end"}
TOOLS = {}


def _kind_and_verb(name):
    parts = [p for p in name.lower().replace("-", "_").split("_") if p]
    verb = parts[0] if parts else name
    noun_parts = parts[1:] or parts
    noun = "_".join(noun_parts)
    if noun.endswith("ies"):
        noun = noun[:-3] + "y"
    elif noun.endswith("s") and not noun.endswith("ss"):
        noun = noun[:-1]
    return noun or "item", verb


def _id_argument(kind, arguments):
    for key in (f"{kind}_id", "id", f"{kind}_name", "name"):
        if key in arguments and not isinstance(arguments[key], (dict, list)):
            return key
    for key, value in arguments.items():
        if key.endswith("_id") and not isinstance(value, (dict, list)):
            return key
    return None


def _load(db, kind, entity_id):
    row = db.execute("SELECT data FROM entities WHERE kind = ? AND id = ?", (kind, str(entity_id))).fetchone()
    return None if row is None else json.loads(row["data"])


def _save(db, kind, entity_id, data):
    db.execute(
        "INSERT INTO entities (kind, id, data) VALUES (?, ?, ?) ON CONFLICT(kind, id) DO UPDATE SET data = excluded.data",
        (kind, str(entity_id), json.dumps(data, sort_keys=True)),
    )


def _next_id(db, kind, integer):
    db.execute("INSERT INTO counters (kind, n) VALUES (?, 1) ON CONFLICT(kind) DO UPDATE SET n = n + 1", (kind,))
    n = db.execute("SELECT n FROM counters WHERE kind = ?", (kind,)).fetchone()["n"]
    return n if integer else f"{kind}_{n}"


def _default(schema, field, seed):
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    if kind == "integer":
        return 0
    if kind == "number":
        return 0.0
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return _shape(schema, {}, seed)
    return f"{field}_{seed}"


def _coerce(schema, value):
    kind = schema.get("type")
    if isinstance(kind, list):
        if value is None and "null" in kind:
            return None
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object":
        return _shape(schema, value, "x") if isinstance(value, dict) else _default(schema, "value", "x")
    if kind == "array":
        return value if isinstance(value, list) else []
    try:
        if kind == "integer" and not isinstance(value, bool):
            return int(value)
        if kind == "number" and not isinstance(value, bool):
            return float(value)
        if kind == "string" and not isinstance(value, str):
            return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        if kind == "boolean" and not isinstance(value, bool):
            return str(value).lower() in ("1", "true", "yes")
    except (TypeError, ValueError):
        return _default(schema, "value", "x")
    return value


def _shape(schema, data, seed):
    """A result that conforms to the output schema, filled from the entity's fields where names match."""
    if not schema or schema.get("type") not in ("object", None) or "properties" not in schema:
        return data
    out = {}
    for field, sub in schema.get("properties", {}).items():
        if field in data:
            out[field] = _coerce(sub, data[field])
        elif sub.get("type") == "array" and isinstance(data.get("__items__"), list):
            out[field] = data["__items__"]
        else:
            out[field] = _default(sub, field, seed)
    return out


def _emulate(db, name, arguments):
    doc = TOOLS[name]
    output = doc.get("outputSchema") or {}
    kind, verb = _kind_and_verb(name)
    id_key = _id_argument(kind, arguments)
    fields = {k: v for k, v in arguments.items() if k != "updates"}
    if isinstance(arguments.get("updates"), dict):
        fields.update(arguments["updates"])
    if verb in CREATE:
        for key, sub in (doc.get("inputSchema") or {}).get("properties", {}).items():
            if key not in fields and isinstance(sub, dict) and "default" in sub:
                fields[key] = sub["default"]
        props = output.get("properties", {})
        integer = props.get("id", {}).get("type") == "integer" or props.get(f"{kind}_id", {}).get("type") == "integer"
        entity_id = _next_id(db, kind, integer)
        record = {**{k: v for k, v in fields.items()}, "id": entity_id, f"{kind}_id": entity_id}
        record.setdefault("status", "open" if kind in ("ticket", "issue", "case") else "created")
        _save(db, kind, entity_id, record)
        return _shape(output, {**record, "success": True}, entity_id) if output else record
    if verb in GET or (verb in UPDATE | DELETE and id_key is not None) or (verb in LIST and id_key and kind != "item" and _load(db, kind, arguments[id_key]) is not None):
        if id_key is None:
            rows = db.execute("SELECT data FROM entities WHERE kind = ? ORDER BY rowid DESC LIMIT 1", (kind,)).fetchall()
            if not rows:
                raise ValueError(f"no {kind} exists yet")
            record = json.loads(rows[0]["data"])
        else:
            record = _load(db, kind, arguments[id_key])
            if record is None:
                raise ValueError(f"no {kind} with {id_key} {arguments[id_key]!r}")
        if verb in UPDATE:
            record.update({k: v for k, v in fields.items() if k != id_key})
            if verb in STATUS_AFTER:
                record["status"] = STATUS_AFTER[verb]
            _save(db, kind, record["id"], record)
        elif verb in DELETE:
            if verb in SOFT_DELETE:
                record["status"] = STATUS_AFTER.get(verb, "closed")
                _save(db, kind, record["id"], record)
            else:
                db.execute("DELETE FROM entities WHERE kind = ? AND id = ?", (kind, str(record["id"])))
                record = {**record, "status": "deleted"}
        return _shape(output, {**record, "success": True}, record["id"]) if output else record
    if verb in LIST:
        rows = [json.loads(r["data"]) for r in db.execute("SELECT data FROM entities WHERE kind = ? ORDER BY rowid", (kind,))]
        for key, value in fields.items():
            if isinstance(value, str):
                rows = [r for r in rows if key not in r or value.lower() in str(r[key]).lower()]
            elif not isinstance(value, (dict, list)):
                rows = [r for r in rows if key not in r or r[key] == value]
        return _shape(output, {"__items__": rows, "count": len(rows), "success": True}, len(rows)) if output else rows
    # a verb the engine does not model: record the action, answer deterministically from the schema
    n = _next_id(db, "action", True)
    _save(db, "action", n, {"tool": name, "arguments": arguments})
    return _shape(output, {**fields, "success": True, "status": "ok"}, n) if output else {"status": "ok", "action_id": n}
