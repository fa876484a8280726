#!/usr/bin/env python3
"""Reference reader: derives the expected import of Tests/Fixtures/chatgpt/conversations.json."""
import json, sys
from decimal import Decimal, ROUND_FLOOR
from datetime import datetime, timezone

def ms(t):
    unix_ms = int((t * 1000).to_integral_value(rounding=ROUND_FLOOR))
    d = datetime.fromtimestamp(unix_ms // 1000, timezone.utc)
    return d.strftime('%Y-%m-%dT%H:%M:%S.') + f'{unix_ms % 1000:03d}Z', unix_ms

data = json.load(open(sys.argv[1], encoding='utf-8'), parse_float=Decimal)
out = []
for c in data:
    m = c["mapping"]
    path, node = [], c["current_node"]
    while node is not None:
        path.append(node); node = m[node]["parent"]
    path.reverse()
    branch_points = {nid: n["children"] for nid, n in m.items() if len(n["children"]) > 1}
    msgs = []
    for nid in path:
        msg = m[nid]["message"]
        if msg is None:
            continue
        content = msg["content"]; ct = content["content_type"]; meta = {}
        if ct in ("text", "multimodal_text"):
            strings = [p for p in content["parts"] if isinstance(p, str)]
            others = [p for p in content["parts"] if not isinstance(p, str)]
            text = "".join(strings)
            if others:
                meta["non_text_parts"] = [{"content_type": p.get("content_type"), "asset_pointer": p.get("asset_pointer")} for p in others]
        elif ct in ("code", "execution_output"):
            text = content["text"]
            if ct == "code": meta["language"] = content["language"]
        else:
            raise SystemExit(ct)
        hidden = msg["metadata"].get("is_visually_hidden_from_conversation", False)
        if hidden or (text == "" and not meta):
            continue                      # hidden system messages carry no text
        if ct != "text": meta["content_type"] = ct
        if msg.get("recipient") not in (None, "all"): meta["recipient"] = msg["recipient"]
        if msg["author"].get("name"): meta["author_name"] = msg["author"]["name"]
        iso, unix = ms(msg["create_time"])
        e = {"node_id": nid, "role": msg["author"]["role"], "content": text, "created_at": iso, "created_at_unix_ms": unix,
             "create_time_raw": str(msg["create_time"])}
        if msg["author"]["role"] == "assistant" and msg["metadata"].get("model_slug"):
            e["model"] = msg["metadata"]["model_slug"]
        if meta: e["metadata"] = meta
        msgs.append(e)
    ci, cu = ms(c["create_time"]), ms(c["update_time"])
    out.append({"id": c["id"], "title": c["title"], "created_at": ci[0], "created_at_unix_ms": ci[1],
                "updated_at": cu[0], "updated_at_unix_ms": cu[1], "current_node": c["current_node"],
                "visible_path_root_to_current": path, "branch_points": branch_points,
                "node_count": len(m), "message_count": len(msgs), "messages": msgs})
print(json.dumps({"file": "conversations.json", "conversation_count": len(out), "conversations": out}, indent=2, ensure_ascii=False))
