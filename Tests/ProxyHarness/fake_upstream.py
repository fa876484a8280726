#!/usr/bin/env python3
"""A fake OpenAI and Anthropic upstream over HTTPS, for testing `chatlog serve` from outside.

Python standard library only (it runs with the system python3; `openssl` makes the certificates).
It replays the wire formats of the real APIs byte for byte as far as a test can see them:

  POST /v1/chat/completions   JSON (pretty-printed, as OpenAI sends it) or SSE `data: {...}` chunks:
                              role chunk, content / refusal / tool-call deltas, a finish chunk,
                              with `stream_options.include_usage` a `"usage": null` member on every
                              chunk and a last usage chunk with empty `choices`, then `data: [DONE]`
  POST /v1/responses          JSON, or SSE `event:`/`data:` pairs: response.created, .in_progress,
                              .output_item.added, .content_part.added, .output_text.delta …,
                              function_call_arguments.delta …, .completed (usage); no [DONE].
                              `previous_response_id` must name a response this fake made
  POST /v1/messages           Anthropic JSON (compact) or SSE: message_start, content_block_start,
                              ping, content_block_delta (text_delta, input_json_delta),
                              content_block_stop, message_delta (stop_reason, usage), message_stop;
                              an `error` event mid-stream when scripted
  GET  /v1/models, POST /v1/embeddings   small answers, for pass-through tests

Errors use each API's error body and headers (OpenAI `x-request-id`, Anthropic `request-id`,
`retry-after` on 429). Identifiers, timestamps and the `date` header are derived from the request
(path, model and messages; never `stream_options`), so the same request answers the same bytes,
directly or through a proxy that adds `stream_options.include_usage`.

Control (plain HTTP, loopback, a second port):
  POST /script    a JSON object or array of objects queued for the next API calls (first match wins;
                  an entry with "path" only matches that path). Keys (all optional):
                    status, error_type, error_message     an error response instead of a completion
                    text, refusal, tool_calls [{name, arguments}], finish_reason / stop_reason
                    usage {input, output, cached, reasoning}, model, headers {name: value}
                    chunk_words (words per delta, default 1), first_delay_ms, delay_ms (per event)
                    disconnect_after N (drop the connection after N events, no terminator)
                    error_event_after N (Anthropic: an `error` event after N events, then end)
                    hang_after N (stop sending after N events; hold the connection open)
                    raw_body (text sent as the body, with the status and headers given)
  GET  /requests  every API request so far: method, path, headers ([[name, value]…]), body
  POST /reset     clear the queue and the record
  GET  /health

    fake_upstream.py --cert-dir DIR [--ready-file FILE] [--openai-key K …] [--anthropic-key K …]
                     [--delay-ms N] [--port N] [--control-port N]

makes DIR/ca.pem (the test CA), DIR/server.pem and DIR/server.key for 127.0.0.1 and localhost if
missing, and writes {"https_port", "control_port", "ca"} to FILE (and stdout) once it listens.
"""

import argparse
import asyncio
import base64
import email.utils
import hashlib
import json
import os
import signal
import ssl
import subprocess
import sys

# --------------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------------


def ensure_certificates(directory):
    """A test CA and a server certificate it signed for 127.0.0.1, ::1 and localhost (openssl CLI)."""
    os.makedirs(directory, exist_ok=True)
    ca_key, ca_pem = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.pem")
    key, csr, pem = (os.path.join(directory, n) for n in ("server.key", "server.csr", "server.pem"))
    if all(os.path.exists(p) for p in (ca_pem, key, pem)):
        return ca_pem, pem, key
    ext = os.path.join(directory, "server.ext")
    with open(ext, "w") as f:
        f.write(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
        )
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", ca_key, "-out", ca_pem, "-days", "30", "-subj", "/CN=chatlog test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    run("x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial",
        "-out", pem, "-days", "30", "-extfile", ext)
    for p in (ca_key, key):
        os.chmod(p, 0o600)
    return ca_pem, pem, key


# --------------------------------------------------------------------------------------------------
# Deterministic identifiers
# --------------------------------------------------------------------------------------------------

ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
EPOCH = 1764979200  # 2025-12-06T00:00:00Z: `created` of every answer, plus a per-request offset


class Seed:
    """Identifiers drawn from a hash of what the request asks (not of how it asks for a stream)."""

    def __init__(self, path, body, counter):
        material = {k: v for k, v in body.items() if k not in ("stream_options",)} if isinstance(body, dict) else body
        self.digest = hashlib.sha256((path + json.dumps(material, sort_keys=True)).encode()).digest()
        self.counter = 0

    def _bytes(self, n):
        self.counter += 1
        out = b""
        i = 0
        while len(out) < n:
            out += hashlib.sha256(self.digest + self.counter.to_bytes(4, "big") + i.to_bytes(4, "big")).digest()
            i += 1
        return out[:n]

    def chars(self, alphabet, n):
        return "".join(alphabet[b % len(alphabet)] for b in self._bytes(n))

    def hex(self, n):
        return self._bytes((n + 1) // 2).hex()[:n]

    def created(self):
        return EPOCH + int.from_bytes(self.digest[:2], "big") % 3600


def http_date(seconds):
    return email.utils.formatdate(seconds, usegmt=True)


# --------------------------------------------------------------------------------------------------
# Request helpers
# --------------------------------------------------------------------------------------------------


def text_of(content):
    """The text of an OpenAI or Anthropic message content (string or list of parts/blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                if part.get("type") in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
                    parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return ""


def last_user_text(messages):
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user":
            text = text_of(message.get("content"))
            if text:
                return text
    return ""


def count_tokens(text):
    return max(1, len(text.split())) if text else 0


def split_words(text, per):
    words = text.split(" ")
    pieces = []
    for i in range(0, len(words), per):
        piece = " ".join(words[i:i + per])
        pieces.append(piece if i == 0 else " " + piece)
    return pieces or [""]


def split_json(arguments):
    """An arguments string cut the way the APIs stream it: a few characters at a time."""
    return [arguments[i:i + 6] for i in range(0, len(arguments), 6)] or [""]


def compact(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def pretty(obj):
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


class Plan:
    """What one call answers: the script entry (or defaults) applied to the request."""

    def __init__(self, entry, request_text, model, defaults):
        self.entry = entry
        self.status = int(entry.get("status", 200))
        self.text = entry.get("text", ("Echo: " + request_text) if request_text else "Hello! How can I help?")
        self.refusal = entry.get("refusal")
        self.tool_calls = entry.get("tool_calls") or []
        self.model = entry.get("model", model)
        self.headers = entry.get("headers", {})
        self.chunk_words = int(entry.get("chunk_words", 1))
        self.first_delay = entry.get("first_delay_ms", 0) / 1000
        self.delay = entry.get("delay_ms", defaults.delay_ms) / 1000
        self.disconnect_after = entry.get("disconnect_after")
        self.error_event_after = entry.get("error_event_after")
        self.hang_after = entry.get("hang_after")
        usage = entry.get("usage", {})
        self.input_tokens = usage.get("input", count_tokens(request_text) + 8)
        self.output_tokens = usage.get(
            "output", count_tokens(self.text or "") + count_tokens(self.refusal or "") + 5 * len(self.tool_calls))
        self.cached_tokens = usage.get("cached", 0)
        self.reasoning_tokens = usage.get("reasoning", 0)

    def arguments(self, call):
        arguments = call.get("arguments", {})
        return arguments if isinstance(arguments, str) else compact(arguments)


# --------------------------------------------------------------------------------------------------
# OpenAI
# --------------------------------------------------------------------------------------------------


def openai_headers(seed, plan, stream):
    headers = [
        ("date", http_date(seed.created())),
        ("content-type", "text/event-stream; charset=utf-8" if stream else "application/json"),
        ("access-control-expose-headers", "X-Request-ID"),
        ("openai-organization", "user-fake0rg"),
        ("openai-processing-ms", str(100 + seed.digest[3])),
        ("openai-project", "proj_" + seed.chars(ALNUM, 24)),
        ("openai-version", "2020-10-01"),
        ("x-envoy-upstream-service-time", str(98 + seed.digest[3])),
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-limit-tokens", "30000000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-remaining-tokens", "29999990"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-reset-tokens", "0s"),
        ("x-request-id", "req_" + seed.hex(32)),
        ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
        ("cf-cache-status", "DYNAMIC"),
        ("set-cookie", "__cf_bm=" + seed.chars(ALNUM, 43) + "; path=/; HttpOnly; Secure; SameSite=None"),
        ("set-cookie", "_cfuvid=" + seed.chars(ALNUM, 43) + "; path=/; HttpOnly; Secure; SameSite=None"),
        ("x-content-type-options", "nosniff"),
        ("server", "cloudflare"),
        ("cf-ray", seed.hex(16) + "-AMS"),
        ("alt-svc", 'h3=":443"; ma=86400'),
    ]
    return headers + list(plan.headers.items())


def openai_error(seed, status, error_type, message, code=None, param=None, extra_headers=()):
    body = pretty({"error": {"message": message, "type": error_type, "param": param, "code": code}})
    headers = [
        ("date", http_date(seed.created())),
        ("content-type", "application/json; charset=utf-8"),
        ("x-request-id", "req_" + seed.hex(32)),
        ("openai-version", "2020-10-01"),
        ("server", "cloudflare"),
        *extra_headers,
    ]
    return status, headers, body.encode()


OPENAI_ERRORS = {
    400: ("invalid_request_error", "Invalid request.", None),
    401: ("invalid_request_error", "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.", "invalid_api_key"),
    429: ("requests", "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.", "rate_limit_exceeded"),
    500: ("server_error", "The server had an error while processing your request. Sorry about that!", None),
    503: ("server_error", "The engine is currently overloaded, please try again later.", None),
}


def scripted_openai_error(seed, plan):
    error_type, message, code = OPENAI_ERRORS.get(plan.status, ("server_error", "Error.", None))
    extra = [("retry-after", "1")] if plan.status == 429 else []
    status, headers, body = openai_error(
        seed, plan.status, plan.entry.get("error_type", error_type), plan.entry.get("error_message", message), code,
        extra_headers=extra)
    return status, headers + list(plan.headers.items()), body


def chat_usage(plan):
    return {
        "prompt_tokens": plan.input_tokens,
        "completion_tokens": plan.output_tokens,
        "total_tokens": plan.input_tokens + plan.output_tokens,
        "prompt_tokens_details": {"cached_tokens": plan.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning_tokens, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
        },
    }


def chat_completion(seed, plan, stream, include_usage):
    completion_id = "chatcmpl-" + seed.chars(ALNUM, 29)
    created = seed.created()
    fingerprint = "fp_" + seed.hex(10)
    calls = [(call, "call_" + seed.chars(ALNUM, 24)) for call in plan.tool_calls]
    finish = plan.entry.get("finish_reason", "tool_calls" if calls else "stop")
    content = None if (calls and not plan.entry.get("text")) or plan.refusal else plan.text
    if not stream:
        message = {"role": "assistant", "content": content, "refusal": plan.refusal, "annotations": []}
        if calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": c["name"], "arguments": plan.arguments(c)}}
                for c, cid in calls]
        body = {
            "id": completion_id, "object": "chat.completion", "created": created, "model": plan.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": chat_usage(plan), "service_tier": "default", "system_fingerprint": fingerprint,
        }
        return pretty(body).encode()

    def chunk(delta, finish_reason=None, choices=True):
        obj = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": plan.model,
               "service_tier": "default", "system_fingerprint": fingerprint,
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if include_usage:
            obj["usage"] = None
        obj["obfuscation"] = seed.chars(ALNUM, 4 + seed.digest[5] % 8)
        return "data: " + compact(obj) + "\n\n"

    events = []
    if calls:
        for i, (call, cid) in enumerate(calls):
            first = {"index": i, "id": cid, "type": "function", "function": {"name": call["name"], "arguments": ""}}
            if i == 0:
                events.append(chunk({"role": "assistant", "content": None, "tool_calls": [first], "refusal": None}))
            else:
                events.append(chunk({"tool_calls": [first]}))
            for piece in split_json(plan.arguments(call)):
                events.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
    elif plan.refusal is not None:
        events.append(chunk({"role": "assistant", "content": None, "refusal": ""}))
        for piece in split_words(plan.refusal, plan.chunk_words):
            events.append(chunk({"refusal": piece}))
    else:
        events.append(chunk({"role": "assistant", "content": "", "refusal": None}))
        for piece in split_words(plan.text, plan.chunk_words):
            events.append(chunk({"content": piece}))
    events.append(chunk({}, finish))
    if include_usage:
        obj = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": plan.model,
               "service_tier": "default", "system_fingerprint": fingerprint, "choices": [], "usage": chat_usage(plan),
               "obfuscation": seed.chars(ALNUM, 6)}
        events.append("data: " + compact(obj) + "\n\n")
    events.append("data: [DONE]\n\n")
    return [e.encode() for e in events]


def responses_usage(plan):
    return {
        "input_tokens": plan.input_tokens,
        "input_tokens_details": {"cache_write_tokens": 0, "cached_tokens": plan.cached_tokens},
        "output_tokens": plan.output_tokens,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
        "total_tokens": plan.input_tokens + plan.output_tokens,
    }


def response_object(seed_ids, plan, body, status, output, usage):
    return {
        "id": seed_ids["id"], "object": "response", "created_at": seed_ids["created"], "status": status,
        "background": False, "billing": {"payer": "developer"}, "error": None,
        "incomplete_details": None if status != "incomplete" else {"reason": "max_output_tokens"},
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None, "model": plan.model, "output": output, "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"), "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None}, "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default", "store": body.get("store", True), "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": "auto",
        "tools": body.get("tools", []), "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled",
        "usage": usage, "user": body.get("user"), "metadata": body.get("metadata", {}),
    }


def responses_output(seed, plan):
    """The output items: a message (text or refusal) and function calls, with their ids."""
    items = []
    if plan.refusal is not None or not plan.tool_calls or plan.entry.get("text"):
        part = ({"type": "refusal", "refusal": plan.refusal} if plan.refusal is not None
                else {"type": "output_text", "annotations": [], "logprobs": [], "text": plan.text})
        items.append({"id": "msg_" + seed.hex(50), "type": "message", "status": "completed",
                      "content": [part], "role": "assistant"})
    for call in plan.tool_calls:
        items.append({"id": "fc_" + seed.hex(50), "type": "function_call", "status": "completed",
                      "arguments": plan.arguments(call), "call_id": "call_" + seed.chars(ALNUM, 24),
                      "name": call["name"]})
    return items


def responses_answer(seed, plan, body, stream):
    ids = {"id": "resp_" + seed.hex(50), "created": seed.created()}
    output = responses_output(seed, plan)
    final_status = plan.entry.get("response_status", "completed")
    if not stream:
        return ids["id"], pretty(response_object(ids, plan, body, final_status, output, responses_usage(plan))).encode()
    events = []
    sequence = 0

    def event(name, payload):
        nonlocal sequence
        payload = {"type": name, "sequence_number": sequence, **payload}
        sequence += 1
        events.append(("event: " + name + "\ndata: " + compact(payload) + "\n\n").encode())

    event("response.created", {"response": response_object(ids, plan, body, "in_progress", [], None)})
    event("response.in_progress", {"response": response_object(ids, plan, body, "in_progress", [], None)})
    for index, item in enumerate(output):
        if item["type"] == "message":
            event("response.output_item.added", {"output_index": index, "item": {
                "id": item["id"], "type": "message", "status": "in_progress", "content": [], "role": "assistant"}})
            part = item["content"][0]
            if part["type"] == "refusal":
                event("response.content_part.added", {"item_id": item["id"], "output_index": index,
                                                      "content_index": 0, "part": {"type": "refusal", "refusal": ""}})
                for piece in split_words(part["refusal"], plan.chunk_words):
                    event("response.refusal.delta", {"item_id": item["id"], "output_index": index,
                                                     "content_index": 0, "delta": piece})
                event("response.refusal.done", {"item_id": item["id"], "output_index": index, "content_index": 0,
                                                "refusal": part["refusal"]})
            else:
                event("response.content_part.added", {"item_id": item["id"], "output_index": index,
                                                      "content_index": 0, "part": {
                                                          "type": "output_text", "annotations": [], "logprobs": [],
                                                          "text": ""}})
                for piece in split_words(part["text"], plan.chunk_words):
                    event("response.output_text.delta", {"item_id": item["id"], "output_index": index,
                                                         "content_index": 0, "delta": piece, "logprobs": [],
                                                         "obfuscation": seed.chars(ALNUM, 10)})
                event("response.output_text.done", {"item_id": item["id"], "output_index": index,
                                                    "content_index": 0, "text": part["text"], "logprobs": []})
            event("response.content_part.done", {"item_id": item["id"], "output_index": index, "content_index": 0,
                                                 "part": part})
        else:
            event("response.output_item.added", {"output_index": index, "item": {**item, "status": "in_progress",
                                                                                "arguments": ""}})
            for piece in split_json(item["arguments"]):
                event("response.function_call_arguments.delta", {"item_id": item["id"], "output_index": index,
                                                                 "delta": piece,
                                                                 "obfuscation": seed.chars(ALNUM, 8)})
            event("response.function_call_arguments.done", {"item_id": item["id"], "output_index": index,
                                                            "arguments": item["arguments"]})
        event("response.output_item.done", {"output_index": index, "item": item})
    final_name = {"completed": "response.completed", "incomplete": "response.incomplete",
                  "failed": "response.failed"}[final_status]
    event(final_name, {"response": response_object(ids, plan, body, final_status, output, responses_usage(plan))})
    return ids["id"], events


# --------------------------------------------------------------------------------------------------
# Anthropic
# --------------------------------------------------------------------------------------------------


def anthropic_headers(seed, plan, stream, request_id):
    headers = [
        ("date", http_date(seed.created())),
        ("content-type", "text/event-stream; charset=utf-8" if stream else "application/json"),
    ]
    if stream:
        headers.append(("cache-control", "no-cache"))
    headers += [
        ("anthropic-ratelimit-input-tokens-limit", "2000000"),
        ("anthropic-ratelimit-input-tokens-remaining", "2000000"),
        ("anthropic-ratelimit-input-tokens-reset", "2025-12-06T00:00:01Z"),
        ("anthropic-ratelimit-output-tokens-limit", "400000"),
        ("anthropic-ratelimit-output-tokens-remaining", "400000"),
        ("anthropic-ratelimit-output-tokens-reset", "2025-12-06T00:00:01Z"),
        ("anthropic-ratelimit-requests-limit", "4000"),
        ("anthropic-ratelimit-requests-remaining", "3999"),
        ("anthropic-ratelimit-requests-reset", "2025-12-06T00:00:01Z"),
        ("anthropic-ratelimit-tokens-limit", "2400000"),
        ("anthropic-ratelimit-tokens-remaining", "2400000"),
        ("anthropic-ratelimit-tokens-reset", "2025-12-06T00:00:01Z"),
        ("request-id", request_id),
        ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
        ("anthropic-organization-id", seed.hex(8) + "-" + seed.hex(4) + "-" + seed.hex(4) + "-" + seed.hex(4) + "-" + seed.hex(12)),
        ("via", "1.1 google"),
        ("cf-cache-status", "DYNAMIC"),
        ("x-robots-tag", "none"),
        ("server", "cloudflare"),
        ("cf-ray", seed.hex(16) + "-AMS"),
    ]
    return headers + list(plan.headers.items())


ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "messages: field required"),
    401: ("authentication_error", "invalid x-api-key"),
    429: ("rate_limit_error", "This request would exceed the rate limit for your organization of 50 requests per minute."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def anthropic_error(seed, status, error_type, message, request_id, extra_headers=()):
    body = compact({"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id})
    headers = [
        ("date", http_date(seed.created())),
        ("content-type", "application/json"),
        ("request-id", request_id),
        ("x-should-retry", "true" if status in (429, 500, 529) else "false"),
        ("server", "cloudflare"),
        *extra_headers,
    ]
    return status, headers, body.encode()


def anthropic_usage(plan, output=True):
    usage = {
        "input_tokens": plan.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": plan.cached_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": plan.output_tokens if output else 1,
        "service_tier": "standard",
    }
    return usage


def anthropic_answer(seed, plan, stream):
    message_id = "msg_01" + seed.chars(BASE58, 22)
    blocks = []
    if plan.refusal is None and (plan.text and (not plan.tool_calls or plan.entry.get("text"))):
        blocks.append({"type": "text", "text": plan.text})
    for call in plan.tool_calls:
        arguments = call.get("arguments", {})
        blocks.append({"type": "tool_use", "id": "toolu_01" + seed.chars(BASE58, 22), "name": call["name"],
                       "input": json.loads(arguments) if isinstance(arguments, str) else arguments})
    if plan.refusal is not None:
        blocks = [{"type": "text", "text": plan.refusal}]
    stop = plan.entry.get("stop_reason", "refusal" if plan.refusal is not None else
                          ("tool_use" if plan.tool_calls else "end_turn"))
    if not stream:
        body = {"model": plan.model, "id": message_id, "type": "message", "role": "assistant", "content": blocks,
                "stop_reason": stop, "stop_sequence": None, "usage": anthropic_usage(plan)}
        return compact(body).encode()
    events = []

    def event(name, payload, text=None):
        events.append(("event: " + name + "\ndata: " + (text if text is not None else compact(payload)) + "\n\n").encode())

    event("message_start", {"type": "message_start", "message": {
        "model": plan.model, "id": message_id, "type": "message", "role": "assistant", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": anthropic_usage(plan, output=False)}})
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            event("content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": {"type": "text", "text": ""}})
            if index == 0:
                event("ping", None, '{"type": "ping"}')
            for piece in split_words(block["text"], plan.chunk_words):
                event("content_block_delta", {"type": "content_block_delta", "index": index,
                                              "delta": {"type": "text_delta", "text": piece}})
        else:
            event("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})
            if index == 0:
                event("ping", None, '{"type": "ping"}')
            for piece in [""] + split_json(compact(block["input"])):
                event("content_block_delta", {"type": "content_block_delta", "index": index,
                                              "delta": {"type": "input_json_delta", "partial_json": piece}})
        event("content_block_stop", {"type": "content_block_stop", "index": index})
    event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                            "usage": {"input_tokens": plan.input_tokens, "cache_creation_input_tokens": 0,
                                      "cache_read_input_tokens": plan.cached_tokens,
                                      "output_tokens": plan.output_tokens}})
    event("message_stop", {"type": "message_stop"})
    if plan.error_event_after is not None:
        cut = events[:int(plan.error_event_after)]
        cut.append(b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
                   b'"message": "Overloaded"}}\n\n')
        return cut
    return events


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


class BadRequest(Exception):
    pass


async def read_request(reader):
    """One HTTP/1.1 request: (method, target, headers [(name, value)], body) or None at EOF."""
    line = await reader.readline()
    if not line:
        return None
    try:
        method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    except ValueError:
        raise BadRequest("bad request line")
    headers = []
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    lookup = {n.lower(): v for n, v in headers}
    body = b""
    if lookup.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    elif "content-length" in lookup:
        body = await reader.readexactly(int(lookup["content-length"]))
    return method, target, headers, body


class FakeUpstream:
    def __init__(self, args):
        self.args = args
        self.queue = []
        self.requests = []
        self.responses = set()
        self.counter = 0
        self.open_streams = 0

    # ---- control ----

    async def control(self, reader, writer):
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    break
                method, target, _headers, body = request
                status, payload = 200, {"ok": True}
                if method == "POST" and target == "/script":
                    entries = json.loads(body or b"[]")
                    self.queue.extend(entries if isinstance(entries, list) else [entries])
                    payload = {"queued": len(self.queue)}
                elif method == "GET" and target == "/requests":
                    payload = self.requests
                elif method == "POST" and target == "/reset":
                    self.queue.clear()
                    self.requests.clear()
                elif method == "GET" and target == "/health":
                    payload = {"ok": True, "open_streams": self.open_streams, "queued": len(self.queue)}
                else:
                    status, payload = 404, {"error": "unknown control path"}
                data = json.dumps(payload).encode()
                writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                             % (status, len(data)) + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, BadRequest):
            pass
        finally:
            writer.close()

    # ---- API ----

    async def api(self, reader, writer):
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    break
                keep = await self.answer(writer, *request)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, BadRequest, ssl.SSLError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    def take_entry(self, path):
        for i, entry in enumerate(self.queue):
            if entry.get("path") in (None, path):
                return self.queue.pop(i)
        return {}

    async def answer(self, writer, method, target, headers, body):
        path = target.split("?", 1)[0]
        lookup = {n.lower(): v for n, v in headers}
        self.counter += 1
        record = {"n": self.counter, "method": method, "path": target, "headers": [[n, v] for n, v in headers],
                  "body": body.decode("utf-8", "replace"), "body_b64": base64.b64encode(body).decode()}
        self.requests.append(record)
        try:
            parsed = json.loads(body) if body else {}
        except ValueError:
            parsed = None
        seed = Seed(path, parsed if parsed is not None else body.decode("latin-1"), self.counter)
        is_anthropic = path == "/v1/messages"
        if path.startswith("/v1/") and not is_anthropic:
            auth = lookup.get("authorization", "")
            key = auth[7:] if auth.startswith("Bearer ") else None
            if not key:
                return await self.send(writer, *openai_error(
                    seed, 401, "invalid_request_error",
                    "You didn't provide an API key. You need to provide your API key in an Authorization header "
                    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", None))
            if self.args.openai_key and key not in self.args.openai_key:
                return await self.send(writer, *openai_error(
                    seed, 401, *OPENAI_ERRORS[401][:1], OPENAI_ERRORS[401][1], "invalid_api_key"))
        if is_anthropic:
            request_id = "req_011C" + seed.chars(BASE58, 20)
            # `x-api-key`, or `Authorization: Bearer` (what anthropic-python 2.x sends for an API key).
            auth = lookup.get("authorization", "")
            key = lookup.get("x-api-key") or (auth[7:] if auth.startswith("Bearer ") else None)
            if not key:
                return await self.send(writer, *anthropic_error(
                    seed, 401, "authentication_error", "x-api-key header is required", request_id))
            if self.args.anthropic_key and key not in self.args.anthropic_key:
                return await self.send(writer, *anthropic_error(
                    seed, 401, "authentication_error", "invalid x-api-key", request_id))
            if "anthropic-version" not in lookup:
                return await self.send(writer, *anthropic_error(
                    seed, 400, "invalid_request_error", "anthropic-version: header is required", request_id))

        if method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "created": EPOCH, "owned_by": "system"}
                    for m in ("gpt-4.1-mini", "gpt-4o")]
            return await self.send(writer, 200, openai_headers(seed, Plan({}, "", "", self.args), False),
                                   pretty({"object": "list", "data": data}).encode())
        if method == "POST" and path == "/v1/embeddings":
            vector = [round(b / 255 - 0.5, 6) for b in seed._bytes(8)]
            out = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": vector}],
                   "model": (parsed or {}).get("model", ""), "usage": {"prompt_tokens": 3, "total_tokens": 3}}
            return await self.send(writer, 200, openai_headers(seed, Plan({}, "", "", self.args), False),
                                   pretty(out).encode())
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/responses", "/v1/messages"):
            return await self.send(writer, *openai_error(
                seed, 404, "invalid_request_error", "Invalid URL (%s %s)" % (method, path), None))
        if not isinstance(parsed, dict):
            if is_anthropic:
                return await self.send(writer, *anthropic_error(
                    seed, 400, "invalid_request_error", "There was an error parsing the body of your request",
                    request_id))
            return await self.send(writer, *openai_error(
                seed, 400, "invalid_request_error",
                "We could not parse the JSON body of your request.", None))

        entry = self.take_entry(path)
        model = parsed.get("model", "")
        stream = bool(parsed.get("stream"))
        if path == "/v1/responses":
            request_text = parsed["input"] if isinstance(parsed.get("input"), str) else last_user_text(parsed.get("input"))
        else:
            request_text = last_user_text(parsed.get("messages"))
        plan = Plan(entry, request_text, model, self.args)
        if "raw_body" in entry:
            hdrs = [("content-type", "application/json")] + list(plan.headers.items())
            return await self.send(writer, plan.status, hdrs, entry["raw_body"].encode())

        if is_anthropic:
            if plan.status != 200:
                error_type, message = ANTHROPIC_ERRORS.get(plan.status, ("api_error", "Error"))
                extra = [("retry-after", "1")] if plan.status == 429 else []
                status, hdrs, data = anthropic_error(seed, plan.status, entry.get("error_type", error_type),
                                                     entry.get("error_message", message), request_id, extra)
                return await self.send(writer, status, hdrs + list(plan.headers.items()), data)
            hdrs = anthropic_headers(seed, plan, stream, request_id)
            answer = anthropic_answer(seed, plan, stream)
        else:
            if plan.status != 200:
                return await self.send(writer, *scripted_openai_error(seed, plan))
            hdrs = openai_headers(seed, plan, stream)
            if path == "/v1/responses":
                previous = parsed.get("previous_response_id")
                if previous is not None and previous not in self.responses:
                    return await self.send(writer, *openai_error(
                        seed, 400, "invalid_request_error", "Previous response with id '%s' not found." % previous,
                        "previous_response_not_found", "previous_response_id"))
                response_id, answer = responses_answer(seed, plan, parsed, stream)
                self.responses.add(response_id)
            else:
                include_usage = bool((parsed.get("stream_options") or {}).get("include_usage"))
                answer = chat_completion(seed, plan, stream, include_usage)
        if not stream:
            if plan.first_delay:
                await asyncio.sleep(plan.first_delay)
            return await self.send(writer, 200, hdrs, answer)
        return await self.send_stream(writer, hdrs, answer, plan)

    async def send(self, writer, status, headers, body):
        head = "HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Status"))
        for name, value in headers:
            head += "%s: %s\r\n" % (name, value)
        head += "content-length: %d\r\nconnection: keep-alive\r\n\r\n" % len(body)
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        return True

    async def send_stream(self, writer, headers, events, plan):
        head = "HTTP/1.1 200 OK\r\n"
        for name, value in headers:
            head += "%s: %s\r\n" % (name, value)
        head += "transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n"
        writer.write(head.encode("latin-1"))
        await writer.drain()
        self.open_streams += 1
        try:
            if plan.first_delay:
                await asyncio.sleep(plan.first_delay)
            for index, event in enumerate(events):
                if plan.disconnect_after is not None and index >= int(plan.disconnect_after):
                    # abort() drops what is still buffered (TLS included): under load the last
                    # events sent were lost and the cut landed earlier than scripted. Let them go
                    # out first (bounded), then cut.
                    for _ in range(500):
                        if writer.transport.get_write_buffer_size() == 0:
                            break
                        await asyncio.sleep(0.01)
                    await asyncio.sleep(0.05)
                    writer.transport.abort()
                    return False
                if plan.hang_after is not None and index >= int(plan.hang_after):
                    # Hold the connection open (bounded) until the other side goes away.
                    for _ in range(600):
                        await asyncio.sleep(1)
                        if writer.transport.is_closing():
                            break
                    writer.transport.abort()
                    return False
                if index and plan.delay:
                    await asyncio.sleep(plan.delay)
                writer.write(b"%x\r\n" % len(event) + event + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        finally:
            self.open_streams -= 1


REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable", 529: "Overloaded"}


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cert-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--ready-file")
    parser.add_argument("--openai-key", action="append", default=[])
    parser.add_argument("--anthropic-key", action="append", default=[])
    parser.add_argument("--delay-ms", type=float, default=0)
    args = parser.parse_args()
    ca, cert, key = ensure_certificates(args.cert_dir)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    fake = FakeUpstream(args)
    api = await asyncio.start_server(fake.api, args.host, args.port, ssl=context, backlog=2048, limit=1 << 24)
    control = await asyncio.start_server(fake.control, "127.0.0.1", args.control_port, limit=1 << 24)
    ready = {"https_port": api.sockets[0].getsockname()[1], "control_port": control.sockets[0].getsockname()[1],
             "ca": os.path.abspath(ca)}
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(ready, f)
        os.replace(tmp, args.ready_file)
    print(json.dumps(ready), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
