#!/usr/bin/env python3
"""Writes Tests/Fixtures/chatgpt/conversations.json (hand-made, in the shape of a real ChatGPT data export)."""
import json, sys

def user_meta(req):
    return {"request_id": req, "message_source": None, "timestamp_": "absolute", "message_type": None}

def asst_meta(model, parent, req, finish="stop"):
    return {"finish_details": {"type": finish, "stop_tokens": [200002]}, "is_complete": True,
            "citations": [], "content_references": [], "message_type": None,
            "model_slug": model, "default_model_slug": "gpt-4o", "parent_id": parent,
            "request_id": req, "timestamp_": "absolute"}

def message(mid, role, t, content, metadata, recipient="all", name=None, end_turn=None, status="finished_successfully"):
    return {"id": mid, "author": {"role": role, "name": name, "metadata": {}},
            "create_time": t, "update_time": None, "content": content, "status": status,
            "end_turn": end_turn, "weight": 1.0, "metadata": metadata, "recipient": recipient, "channel": None}

def text(*parts):
    return {"content_type": "text", "parts": list(parts)}

def hidden_system(mid, parts):
    return {"id": mid, "author": {"role": "system", "name": None, "metadata": {}}, "create_time": None, "update_time": None,
         "content": {"content_type": "text", "parts": parts}, "status": "finished_successfully", "end_turn": True,
         "weight": 0.0, "metadata": {"is_visually_hidden_from_conversation": True}, "recipient": "all", "channel": None}

def conversation(cid, title, create, update, current, nodes, default_model="gpt-4o"):
    """nodes: list of (node_id, parent_id, message-or-None); children are derived in list order."""
    mapping = {}
    for nid, parent, msg in nodes:
        mapping[nid] = {"id": nid, "message": msg, "parent": parent, "children": []}
    for nid, parent, msg in nodes:
        if parent is not None:
            mapping[parent]["children"].append(nid)
    assert current in mapping
    return {"title": title, "create_time": create, "update_time": update, "mapping": mapping,
            "moderation_results": [], "current_node": current, "plugin_ids": None,
            "conversation_id": cid, "conversation_template_id": None, "gizmo_id": None, "gizmo_type": None,
            "is_archived": False, "is_starred": None, "safe_urls": [], "blocked_urls": [],
            "default_model_slug": default_model, "conversation_origin": None, "voice": None,
            "async_status": None, "disabled_tool_ids": [], "is_do_not_remember": False,
            "memory_scope": "global_enabled", "sugar_item_id": None, "id": cid}

convs = []

# 1. A simple two-turn conversation, new-style root id, hidden system message with parts [""].
c1 = "6667c28a-1f04-8001-a8e2-3b1c6e9d4f10"
convs.append(conversation(c1, "Capital of Portugal", 1718207114.120345, 1718207139.904512, "7f3c1a2e-94b5-4c6d-8e7f-0a1b2c3d4e56", [
    ("client-created-root", None, None),
    ("4b1e2c3d-5f60-4718-9a2b-3c4d5e6f7a81", "client-created-root", hidden_system("4b1e2c3d-5f60-4718-9a2b-3c4d5e6f7a81", [""])),
    ("aaa2d7b1-0c4e-4f1a-9b3e-6f2a8c1d5e01", "4b1e2c3d-5f60-4718-9a2b-3c4d5e6f7a81",
     message("aaa2d7b1-0c4e-4f1a-9b3e-6f2a8c1d5e01", "user", 1718207114.257163, text("What is the capital of Portugal?"), user_meta("891f2a7c3b1e4d02-LIS"))),
    ("5e0a1f3b-7c2d-4e8f-a1b2-c3d4e5f60718", "aaa2d7b1-0c4e-4f1a-9b3e-6f2a8c1d5e01",
     message("5e0a1f3b-7c2d-4e8f-a1b2-c3d4e5f60718", "assistant", 1718207115.832706, text("The capital of Portugal is Lisbon."),
             asst_meta("gpt-4o", "aaa2d7b1-0c4e-4f1a-9b3e-6f2a8c1d5e01", "891f2a7c3b1e4d02-LIS"), end_turn=True)),
    ("aaa2f4c9-8d1e-4b2a-9c7f-1e3d5b7a9c02", "5e0a1f3b-7c2d-4e8f-a1b2-c3d4e5f60718",
     message("aaa2f4c9-8d1e-4b2a-9c7f-1e3d5b7a9c02", "user", 1718207137.645120, text("And roughly how many people live there?"), user_meta("891f2a9d5e7a4d02-LIS"))),
    ("7f3c1a2e-94b5-4c6d-8e7f-0a1b2c3d4e56", "aaa2f4c9-8d1e-4b2a-9c7f-1e3d5b7a9c02",
     message("7f3c1a2e-94b5-4c6d-8e7f-0a1b2c3d4e56", "assistant", 1718207139.904512,
             text("About 545,000 people live in the city of Lisbon itself, and roughly 2.9 million in the wider metropolitan area."),
             asst_meta("gpt-4o", "aaa2f4c9-8d1e-4b2a-9c7f-1e3d5b7a9c02", "891f2a9d5e7a4d02-LIS"), end_turn=True)),
]))

# 2. Branches: the first user message was edited (two children under the system node), and the answer to the
#    edited message was regenerated (two children under it). current_node is on the regenerated branch,
#    one turn further on.  Old-style root id, hidden system message with parts [].
c2 = "66a0b4f2-93c8-800c-b7d1-0e5f2a4c6b21"
R2, S2 = "aaa1b2c3-d4e5-4f60-8172-93a4b5c6d7e8", "0c9d8e7f-6a5b-4c3d-9e2f-1a0b9c8d7e6f"
U_ORIG, A_ORIG = "aaa27e41-5b6c-4d7e-8f90-a1b2c3d4e5f1", "b3c4d5e6-f7a8-49b0-8c1d-2e3f4a5b6c71"
U_EDIT, A_FIRST, A_REGEN = "aaa29c03-1d2e-4f3a-8b4c-5d6e7f8a9b02", "c5d6e7f8-a9b0-41c2-9d3e-4f5a6b7c8d92", "d7e8f9a0-b1c2-43d4-8e5f-6a7b8c9d0e13"
U_FR, A_FR = "aaa2e1f2-a3b4-4c5d-9e6f-7a8b9c0d1e24", "e9f0a1b2-c3d4-45e6-8f7a-8b9c0d1e2f35"
convs.append(conversation(c2, "Autumn Haiku", 1721807090.418807, 1721807312.775291, A_FR, [
    (R2, None, None),
    (S2, R2, hidden_system(S2, [])),
    (U_ORIG, S2, message(U_ORIG, "user", 1721807090.533612, text("Write a haiku about autumn."), user_meta("8a7b-orig"))),
    (A_ORIG, U_ORIG, message(A_ORIG, "assistant", 1721807092.161174,
        text("Crisp leaves drift and fall\nGolden light on quiet paths\nThe year exhales slow"),
        asst_meta("gpt-4o", U_ORIG, "8a7b-orig"), end_turn=True)),
    (U_EDIT, S2, message(U_EDIT, "user", 1721807151.902233, text("Write a haiku about autumn rain."), user_meta("8a7b-edit"))),
    (A_FIRST, U_EDIT, message(A_FIRST, "assistant", 1721807153.370481,
        text("Cold rain on the eaves\nMaple leaves stick to the glass\nThe gutters hum low"),
        asst_meta("gpt-4o-mini", U_EDIT, "8a7b-edit"), end_turn=True)),
    (A_REGEN, U_EDIT, message(A_REGEN, "assistant", 1721807204.648920,
        text("Autumn rain whispers\nRed leaves float in the puddles\nThe streetlights blur gold"),
        asst_meta("gpt-4o", U_EDIT, "8a7b-regen"), end_turn=True)),
    (U_FR, A_REGEN, message(U_FR, "user", 1721807309.010455, text("Now translate it into French."), user_meta("8a7b-fr"))),
    (A_FR, U_FR, message(A_FR, "assistant", 1721807312.775291,
        text("La pluie d’automne murmure\nDes feuilles rouges flottent dans les flaques\nLes réverbères se fondent en or 🍂"),
        asst_meta("gpt-4o", U_FR, "8a7b-fr"), end_turn=True)),
]))

# 3. Code interpreter: an assistant `code` message addressed to the python tool, the tool's execution_output,
#    then the answer.  (Real exports: `code` and `execution_output` content has `text`, not `parts`.)
c3 = "67b1d3e5-2a4c-8006-9e8f-5d7c3b1a9f42"
U3, CODE3, OUT3, A3 = "aaa21a2b-3c4d-4e5f-8a6b-7c8d9e0f1a23", "f1a2b3c4-d5e6-47f8-9a0b-1c2d3e4f5a64", "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c85", "1b2c3d4e-5f6a-4b7c-9d8e-0f1a2b3c4d96"
convs.append(conversation(c3, "Sum of Squares", 1739704801.300218, 1739704809.642557, A3, [
    ("client-created-root", None, None),
    (U3, "client-created-root", message(U3, "user", 1739704801.446890, text("What is the sum of the squares of the integers from 1 to 10?"), user_meta("9c-sq"))),
    (CODE3, U3, message(CODE3, "assistant", 1739704804.118034,
        {"content_type": "code", "language": "unknown", "response_format_name": None, "text": "sum(i * i for i in range(1, 11))"},
        asst_meta("gpt-4o", U3, "9c-sq", finish="stop"), recipient="python", end_turn=False)),
    (OUT3, CODE3, message(OUT3, "tool", 1739704804.981245,
        {"content_type": "execution_output", "text": "385"},
        {"is_complete": True, "aggregate_result": {"status": "success", "run_id": "3f1e2d4c-5b6a-4789-8a0b-1c2d3e4f5a6b", "code": "sum(i * i for i in range(1, 11))", "final_expression_output": "385"}, "model_slug": "gpt-4o", "parent_id": CODE3, "request_id": "9c-sq", "timestamp_": "absolute"},
        name="python")),
    (A3, OUT3, message(A3, "assistant", 1739704809.642557,
        text("The sum of the squares of 1 to 10 is **385**."),
        asst_meta("gpt-4o", OUT3, "9c-sq"), end_turn=True)),
]))

# 4. multimodal_text: a user message whose parts mix an image pointer object and a string.
c4 = "68c2e4f6-3b5d-8007-a0f1-6e8d4c2b0a53"
U4, A4 = "aaa23c4d-5e6f-4a7b-8c9d-0e1f2a3b4c07", "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e18"
convs.append(conversation(c4, "Cat Breed Identification", 1757331842.907731, 1757331847.215009, A4, [
    ("client-created-root", None, None),
    (U4, "client-created-root", message(U4, "user", 1757331843.055102, {"content_type": "multimodal_text", "parts": [
        {"content_type": "image_asset_pointer", "asset_pointer": "file-service://file-7YqN3kR2vB8xLmP4sT6wZc", "size_bytes": 184213,
         "width": 1024, "height": 768, "fovea": None, "metadata": None},
        "What breed is this cat?",
    ]}, {**user_meta("a1-cat"), "attachments": [{"id": "file-7YqN3kR2vB8xLmP4sT6wZc", "size": 184213, "name": "IMG_2041.jpeg",
         "mime_type": "image/jpeg", "width": 1024, "height": 768}]})),
    (A4, U4, message(A4, "assistant", 1757331847.215009,
        text("It looks like a British Shorthair: the round face, copper eyes and dense blue-grey coat are typical of the breed."),
        asst_meta("gpt-4o", U4, "a1-cat"), end_turn=True)),
]))

json.dump(convs, open(sys.argv[1], "w", encoding="utf-8"), indent=2, ensure_ascii=False)
open(sys.argv[1], "a").write("\n")
