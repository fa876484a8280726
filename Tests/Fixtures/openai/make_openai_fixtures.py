#!/usr/bin/env python3
"""Writes Tests/Fixtures/openai/sample.jsonl and Tests/Fixtures/openai/bad/*.jsonl."""
import json, os, sys
root = sys.argv[1]
os.makedirs(f"{root}/bad", exist_ok=True)
def line(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")) + "\n"

simple = {"messages": [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"}]}
parts = {"messages": [
    {"role": "user", "content": [
        {"type": "text", "text": "Compare these two sentences:\n"},
        {"type": "text", "text": "1. The cat sat.\n2. The cat sits."},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}]},
    {"role": "assistant", "content": [
        {"type": "text", "text": "The first is in the past tense, the second in the present."}]}]}
tools = {"messages": [
    {"role": "system", "content": "You can look up the weather."},
    {"role": "user", "content": "What's the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_9Xk2mQ7rT4vB1nL8", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
    {"role": "tool", "tool_call_id": "call_9Xk2mQ7rT4vB1nL8", "content": "{\"temp_c\": 18, \"sky\": \"cloudy\"}"},
    {"role": "assistant", "content": "It is 18 °C and cloudy in Paris."}]}
chatlog = {"id": "0190718a-3c5e-7b2d-9f41-6a8e2d4c1b07", "title": "Café order", "subject": "customer-4711",
    "model": "gpt-4o-mini", "created_at": "2024-07-01T09:30:00.123Z",
    "metadata": {"app": "barista", "tags": ["demo", "fr"]},
    "messages": [
        {"role": "system", "content": "Tu es un barista poli.", "created_at": "2024-07-01T09:30:00.123Z"},
        {"role": "user", "content": "Un café crème, s’il vous plaît ☕", "created_at": "2024-07-01T09:30:01.500Z"},
        {"role": "assistant", "content": "Bien sûr ! Un café crème arrive.", "created_at": "2024-07-01T11:30:02.750+02:00",
         "model": "gpt-4o-mini-2024-07-18", "usage": {"prompt_tokens": 42, "completion_tokens": 9}}]}
unicode_ = {"messages": [
    {"role": "user", "content": "Line one\nLine two\n\n  indented — 東京で寿司を食べる 🍣🎉"},
    {"role": "assistant", "content": "Noted: three lines and a sushi emoji.", "weight": 1}]}
with open(f"{root}/sample.jsonl", "w", encoding="utf-8") as f:
    for o in (simple, parts, tools, chatlog, unicode_):
        f.write(line(o))

ok = line({"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."}]})
def write(name, data: bytes):
    with open(f"{root}/bad/{name}", "wb") as f:
        f.write(data)
# bad line 3 (last line, cut mid-string, no newline at the end)
write("truncated.jsonl", (ok + ok).encode() + b'{"messages": [{"role": "user", "content": "This line was cut of')
# bad line 2
write("not-json.jsonl", (ok + "this is not json\n" + ok).encode())
# bad line 1
write("messages-is-string.jsonl", (line({"messages": "Hello, this should be an array"}) + ok).encode())
# bad line 2
write("role-is-number.jsonl", (ok + line({"messages": [{"role": 1, "content": "Hi"}, {"role": "assistant", "content": "Hello."}]})).encode())
# bad line 2
write("missing-messages.jsonl", (ok + line({"id": "0190718a-3c5e-7b2d-9f41-6a8e2d4c1b08", "title": "No messages here"}) + ok).encode())
# bad line 2: "caf\xe9" is Latin-1 é, not UTF-8; line 3 also has a lone continuation byte \x80
write("invalid-utf8.jsonl", ok.encode() + b'{"messages": [{"role": "user", "content": "caf\xe9 au lait"}]}\n'
      + b'{"messages": [{"role": "user", "content": "\x80 stray continuation byte"}]}\n')
