#!/usr/bin/env python3
"""Reference reader for llm logs.db files: derives the expected import of each fixture.
Uses only sqlite3 (never llm itself), so it states what an importer has to do."""
import json, sqlite3, sys
from datetime import datetime, timezone

def ms(ts):
    """llm's datetime_utc -> (RFC 3339 UTC string truncated to ms, unix ms). Accepts 'T' or ' ', with or without +00:00."""
    t = ts.replace(' ', 'T')
    d = datetime.fromisoformat(t)
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    d = d.astimezone(timezone.utc)
    unix_ms = (int(d.timestamp()) * 1000) + d.microsecond // 1000
    return d.strftime('%Y-%m-%dT%H:%M:%S.') + f'{d.microsecond // 1000:03d}Z', unix_ms

def cols(db, table):
    return {r[1] for r in db.execute(f'pragma table_info("{table}")')}

def tables(db):
    return {r[0] for r in db.execute("select name from sqlite_master where type='table'")}

def msg(role, content, created, model=None, pt=None, ct=None, lat=None, meta=None, raw=None):
    iso, unix = ms(created)
    m = {"role": role, "content": content, "created_at": iso, "created_at_unix_ms": unix, "datetime_utc_raw": raw or created}
    if model is not None: m["model"] = model
    if pt is not None: m["prompt_tokens"] = pt
    if ct is not None: m["completion_tokens"] = ct
    if lat is not None: m["latency_ms"] = lat
    if meta: m["metadata"] = meta
    return m

# ---------- classic ----------
def classic(db):
    rc = cols(db, 'responses')
    T = tables(db)
    out = {}
    convs = list(db.execute('select id, name, model from conversations'))
    for cid, name, cmodel in convs:
        rows = list(db.execute('select rowid, * from responses where conversation_id = ? order by datetime_utc, rowid', [cid]))
        names = ['rowid'] + [d[0] for d in db.execute('select rowid, * from responses limit 0').description][1:]
        messages = []
        last_system = None
        for row in rows:
            r = dict(zip(names, row))
            when = r['datetime_utc']
            if r['system'] and r['system'] != last_system:
                messages.append(msg('system', r['system'], when))
                last_system = r['system']
            frags = []
            if 'prompt_fragments' in T:
                frags = [c for (c,) in db.execute('select f.content from prompt_fragments pf join fragments f on f.id = pf.fragment_id where pf.response_id = ? order by pf."order"', [r['id']])]
            tool_results = []
            if 'tool_results' in T:
                tool_results = list(db.execute('select name, output, tool_call_id from tool_results where response_id = ? order by id', [r['id']]))
            for name_, output, tcid in tool_results:
                meta = {"tool_name": name_}
                if tcid: meta["tool_call_id"] = tcid
                messages.append(msg('tool', output, when, meta=meta))
            user_text = '\n'.join(frags + ([r['prompt']] if r['prompt'] else []))
            meta = {}
            if 'prompt_attachments' in T:
                atts = [{"id": i, "type": t} for i, t in db.execute('select a.id, a.type from prompt_attachments pa join attachments a on a.id = pa.attachment_id where pa.response_id = ? order by pa."order"', [r['id']])]
                if atts: meta["attachments"] = atts
            if user_text or not tool_results:
                messages.append(msg('user', user_text, when, meta=meta or None))
            model = r.get('resolved_model') or r['model']
            ameta = {}
            if r.get('options_json') and r['options_json'] != '{}':
                ameta["options"] = json.loads(r['options_json'])
            if 'tool_calls' in T:
                tcs = [{"name": n, "arguments": json.loads(a), **({"tool_call_id": i} if i else {})} for n, a, i in db.execute('select name, arguments, tool_call_id from tool_calls where response_id = ? order by id', [r['id']])]
                if tcs: ameta["tool_calls"] = tcs
            messages.append(msg('assistant', r['response'], when, model, r.get('input_tokens'), r.get('output_tokens'), r['duration_ms'], ameta or None))
        out[cid] = {"id": cid, "title": name, "source": "classic", "messages": messages,
                    "legacy_response_count": len(rows)}
    return out

# ---------- message store ----------
def chain(db, tip):
    res = []
    h = tip
    while h is not None:
        row = db.execute('select hash, parent_hash, role from messages where hash = ?', [h]).fetchone()
        res.append(row)
        h = row[1]
    return res[::-1]

def part_content(db, mhash):
    text, meta = [], {}
    for pid, ptype, tool_name, ptext, payload in db.execute('select id, type, tool_name, text, payload from parts where message_hash = ? order by position', [mhash]):
        p = json.loads(payload) if payload else {}
        if ptype in ('text', 'reasoning'):
            if ptext is not None:
                s = ptext
            else:
                s = ''.join(piece['literal'] if 'literal' in piece else db.execute('select content from fragments where id = ?', [piece['fragment']]).fetchone()[0] for piece in p['text_ref'])
                meta.setdefault("fragments", []).extend(h for (h,) in db.execute('select f.hash from part_fragments pf join fragments f on f.id = pf.fragment_id where pf.part_id = ? order by pf."order"', [pid]))
            if ptype == 'text':
                text.append(s)
            else:
                meta["reasoning"] = meta.get("reasoning", '') + s
        elif ptype == 'tool_call':
            meta.setdefault("tool_calls", []).append({"name": p["name"], "arguments": p.get("arguments"), "tool_call_id": p.get("tool_call_id")})
        elif ptype == 'tool_result':
            text.append(str(p.get("output")))
            meta["tool_name"] = p["name"]; meta["tool_call_id"] = p.get("tool_call_id")
        elif ptype == 'attachment':
            aid = p["attachment"]["id"]
            atype = db.execute('select type from attachments where id = ?', [aid]).fetchone()[0]
            meta.setdefault("attachments", []).append({"id": aid, "type": atype})
        else:
            raise SystemExit(f'unknown part type {ptype}')
    return ''.join(text), meta

def store(db, legacy):
    out = {}
    for tid, tname, tip, forked, tdt in db.execute('select id, name, tip_message_hash, forked_from, datetime_utc from threads order by datetime_utc, rowid').fetchall():
        ch = chain(db, tip)
        idx = {h: i for i, (h, _, _) in enumerate(ch)}
        turns = db.execute('select id, parent_message_hash, tip_message_hash, model, resolved_model, input_tokens, output_tokens, duration_ms, datetime_utc, options_json from turns where thread_id = ? order by datetime_utc, rowid', [tid]).fetchall()
        owner = [None] * len(ch)   # (turn, is_output)
        for t in turns:
            pi, ti = idx[t[1]], idx[t[2]]
            for i in range(pi + 1, ti + 1):
                owner[i] = (t, True)
            i = pi
            while i >= 0 and owner[i] is None and ch[i][2] != 'assistant':
                owner[i] = (t, False); i -= 1
        prefix = 0
        while prefix < len(ch) and owner[prefix] is None:
            prefix += 1
        assert all(o is not None for o in owner[prefix:]), tid
        messages = []
        src = "message-store"
        title = tname
        if prefix:
            leg = legacy.pop(tid, None)
            assert leg is not None, f'thread {tid} has {prefix} messages no turn accounts for and no legacy conversation'
            assert len(leg["messages"]) == prefix, (len(leg["messages"]), prefix)
            messages = leg["messages"]; title = leg["title"]; src = "classic+message-store"
        for i in range(prefix, len(ch)):
            h, _, role = ch[i]
            t, is_out = owner[i]
            content, meta = part_content(db, h)
            meta = meta or {}
            is_tip = h == t[2]
            if is_tip and t[9]:
                meta["options"] = json.loads(t[9])
            m = msg(role, content, t[8],
                    model=(t[4] or t[3]) if is_out else None,
                    pt=t[5] if is_tip else None, ct=t[6] if is_tip else None, lat=t[7] if is_tip else None,
                    meta=meta or None)
            m["llm_message_hash"] = h
            m["llm_turn_id"] = t[0]
            messages.append(m)
        out[tid] = {"id": tid, "title": title, "source": src, "thread_datetime_utc_raw": tdt, "messages": messages}
    return out

def main(path):
    db = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
    T = tables(db)
    migrations = [n for (n,) in db.execute('select name from _llm_migrations order by applied_at, rowid')]
    legacy = classic(db)
    convs = store(db, legacy) if 'threads' in T else {}
    allc = list(legacy.values()) + list(convs.values())
    for c in allc:
        c["created_at"] = c["messages"][0]["created_at"]
        c["updated_at"] = c["messages"][-1]["created_at"]
        c["message_count"] = len(c["messages"])
    allc.sort(key=lambda c: (c["messages"][0]["created_at_unix_ms"], c["id"]))
    print(json.dumps({"file": path.split('/')[-1], "migrations": migrations, "conversation_count": len(allc), "conversations": allc}, indent=2, ensure_ascii=False))

main(sys.argv[1])
