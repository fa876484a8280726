#!/usr/bin/env python3
"""Calls made with the official `openai` and `anthropic` Python SDKs, as an app would make them.

Runs in the venv that Tests/ProxyHarness/ensure-venv makes. Reads a JSON array of calls (argument 1: the
JSON itself or a file holding it; stdin with `-`) and prints one JSON object per call on stdout, in order. Each call:

  {"sdk": "openai", "api": "chat" | "responses", ...} or {"sdk": "anthropic", ...}
  base_url, api_key        where to send it and with which key (the proxy's URL, or the fake's)
  stream                   use the SDK's streaming form (chat: iterate chunks; responses: iterate
                           events; anthropic: `messages.stream(...)` and `get_final_message()`)
  messages / input / system / tools / tool_choice / model / max_tokens / stream_options / user /
                           metadata / safety_identifier / previous_response_id / instructions
  continue                 chat and anthropic: send the previous call's messages, its answer (with
                           its tool calls) and then these messages, as an app resends the history
  chain                    responses: previous_response_id = the previous call's response id
  headers                  extra request headers (X-Chatlog-Subject, X-Chatlog-Conversation, …)
  max_retries              default 0, so a scripted 429 or 500 reaches the test once

Each result: {"ok": true, "text", "refusal", "tool_calls", "finish_reason", "usage", "id", "model",
"headers" (response headers, lower-case), "events" (stream event count)} or {"ok": false,
"error": class name, "status", "message", "request_id", "headers"}. With SSL_CERT_FILE set the SDKs
trust that CA (for calls made directly to the fake upstream).
"""

import json
import sys

import anthropic
import openai


def headers_of(response):
    return {k.lower(): v for k, v in response.headers.items()} if response is not None else {}


def plain(value):
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    return value


def openai_chat(client, call, state):
    messages = list(call.get("messages", []))
    if call.get("continue"):
        messages = state["messages"] + [state["assistant"]] + messages
    kwargs = {"model": call.get("model", "gpt-4.1-mini"), "messages": messages}
    for key in ("tools", "tool_choice", "user", "safety_identifier", "stream_options", "max_tokens", "metadata",
                "store"):
        if key in call:
            kwargs[key] = call[key]
    result = {"ok": True}
    if call.get("stream"):
        raw = client.chat.completions.with_raw_response.create(stream=True, extra_headers=call.get("headers"), **kwargs)
        result["headers"] = headers_of(raw)
        text, refusal, calls, finish, usage, events, chunk_id, model = "", None, {}, None, None, 0, None, None
        for chunk in raw.parse():
            events += 1
            chunk_id, model = chunk.id, chunk.model
            if chunk.usage is not None:
                usage = plain(chunk.usage)
            for choice in chunk.choices:
                delta = choice.delta
                if delta.content:
                    text += delta.content
                if delta.refusal:
                    refusal = (refusal or "") + delta.refusal
                for tc in delta.tool_calls or []:
                    entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                    if tc.id:
                        entry["id"] = tc.id
                    if tc.function and tc.function.name:
                        entry["name"] += tc.function.name
                    if tc.function and tc.function.arguments:
                        entry["arguments"] += tc.function.arguments
                if choice.finish_reason:
                    finish = choice.finish_reason
        tool_calls = [calls[i] for i in sorted(calls)]
        result.update(text=text, refusal=refusal, tool_calls=tool_calls, finish_reason=finish, usage=usage,
                      id=chunk_id, model=model, events=events)
    else:
        raw = client.chat.completions.with_raw_response.create(extra_headers=call.get("headers"), **kwargs)
        result["headers"] = headers_of(raw)
        completion = raw.parse()
        choice = completion.choices[0]
        tool_calls = [{"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}
                      for tc in choice.message.tool_calls or []]
        result.update(text=choice.message.content or "", refusal=choice.message.refusal, tool_calls=tool_calls,
                      finish_reason=choice.finish_reason, usage=plain(completion.usage), id=completion.id,
                      model=completion.model)
    assistant = {"role": "assistant", "content": result["text"] or None}
    if result["tool_calls"]:
        assistant["tool_calls"] = [{"id": c["id"], "type": "function",
                                    "function": {"name": c["name"], "arguments": c["arguments"]}}
                                   for c in result["tool_calls"]]
    state.update(messages=messages, assistant=assistant)
    return result


def openai_responses(client, call, state):
    kwargs = {"model": call.get("model", "gpt-4.1-mini"), "input": call.get("input", "")}
    for key in ("tools", "instructions", "user", "safety_identifier", "previous_response_id", "store", "metadata",
                "max_output_tokens"):
        if key in call:
            kwargs[key] = call[key]
    if call.get("chain"):
        kwargs["previous_response_id"] = state["response_id"]
    result = {"ok": True}
    if call.get("stream"):
        raw = client.responses.with_raw_response.create(stream=True, extra_headers=call.get("headers"), **kwargs)
        result["headers"] = headers_of(raw)
        text, events, final, refusal = "", 0, None, None
        for event in raw.parse():
            events += 1
            if event.type == "response.output_text.delta":
                text += event.delta
            elif event.type == "response.refusal.delta":
                refusal = (refusal or "") + event.delta
            elif event.type in ("response.completed", "response.incomplete", "response.failed"):
                final = event.response
        response = final
        result["events"] = events
    else:
        raw = client.responses.with_raw_response.create(extra_headers=call.get("headers"), **kwargs)
        result["headers"] = headers_of(raw)
        response = raw.parse()
        text, refusal = response.output_text, None
    calls = [{"id": i.call_id, "name": i.name, "arguments": i.arguments}
             for i in (response.output if response is not None else []) if i.type == "function_call"]
    for item in response.output if response is not None else []:
        if item.type == "message":
            for part in item.content:
                if part.type == "refusal":
                    refusal = part.refusal
    result.update(text=text, refusal=refusal, tool_calls=calls,
                  finish_reason=response.status if response is not None else None,
                  usage=plain(response.usage) if response is not None else None,
                  id=response.id if response is not None else None,
                  model=response.model if response is not None else None)
    state["response_id"] = result["id"]
    return result


def anthropic_messages(client, call, state):
    messages = list(call.get("messages", []))
    if call.get("continue"):
        messages = state["messages"] + [state["assistant"]] + messages
    kwargs = {"model": call.get("model", "claude-sonnet-4-5"), "max_tokens": call.get("max_tokens", 1024),
              "messages": messages}
    for key in ("system", "tools", "tool_choice", "metadata", "temperature"):
        if key in call:
            kwargs[key] = call[key]
    result = {"ok": True}
    if call.get("stream"):
        with client.messages.stream(extra_headers=call.get("headers"), **kwargs) as stream:
            result["headers"] = headers_of(stream.response)
            events = 0
            for _event in stream:
                events += 1
            message = stream.get_final_message()
        result["events"] = events
    else:
        raw = client.messages.with_raw_response.create(extra_headers=call.get("headers"), **kwargs)
        result["headers"] = headers_of(raw)
        message = raw.parse()
    text = "".join(b.text for b in message.content if b.type == "text")
    calls = [{"id": b.id, "name": b.name, "arguments": json.dumps(b.input, separators=(",", ":"))}
             for b in message.content if b.type == "tool_use"]
    result.update(text=text, refusal=None, tool_calls=calls, finish_reason=message.stop_reason,
                  usage=plain(message.usage), id=message.id, model=message.model)
    state.update(messages=messages, assistant={"role": "assistant",
                                               "content": [plain(b) for b in message.content]})
    return result


def run(call, state):
    sdk = call.get("sdk", "openai")
    retries = call.get("max_retries", 0)
    if sdk == "anthropic":
        client = anthropic.Anthropic(api_key=call.get("api_key", "unused"), base_url=call["base_url"],
                                     max_retries=retries, timeout=call.get("timeout", 60),
                                     _strict_response_validation=call.get("strict", True))
        errors = anthropic
        action = anthropic_messages
    else:
        client = openai.OpenAI(api_key=call.get("api_key", "unused"), base_url=call["base_url"], max_retries=retries,
                               timeout=call.get("timeout", 60), _strict_response_validation=call.get("strict", True))
        errors = openai
        action = openai_chat if call.get("api", "chat") == "chat" else openai_responses
    try:
        return action(client, call, state)
    except errors.APIStatusError as error:
        body = error.body if isinstance(error.body, (dict, list, str)) else None
        return {"ok": False, "error": type(error).__name__, "status": error.status_code, "message": str(error),
                "request_id": getattr(error, "request_id", None), "headers": headers_of(error.response),
                "body": body}
    except errors.APIError as error:
        return {"ok": False, "error": type(error).__name__, "status": None, "message": str(error)}
    finally:
        client.close()


def main():
    if len(sys.argv) < 2 or sys.argv[1] == "-":
        source = sys.stdin.read()
    elif sys.argv[1].lstrip().startswith("["):
        source = sys.argv[1]
    else:
        with open(sys.argv[1]) as f:
            source = f.read()
    calls = json.loads(source)
    state = {}
    for call in calls:
        print(json.dumps(run(call, state)), flush=True)


if __name__ == "__main__":
    main()
