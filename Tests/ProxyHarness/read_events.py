#!/usr/bin/env python3
"""Sends one streaming request and reads its server-sent events as they arrive (standard library only).

    read_events.py URL BODY_FILE COUNT [--header 'Name: value' ...] [--cafile CA] [--timeout S]

Prints, as JSON: {"status", "events": [the first COUNT events' exact bytes, as text], "complete": whether
COUNT events arrived}, then closes the connection — so a test can tell that a proxy passed events on
while the upstream was still holding the stream open (nothing buffered), and hang up mid-stream like a
client that goes away. Exits 0 when COUNT events arrived, 1 otherwise (the stream ended first, or
nothing came for --timeout seconds, default 30).
"""

import argparse
import http.client
import json
import socket
import ssl
import sys
import urllib.parse


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("body")
    parser.add_argument("count", type=int)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--cafile")
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args()
    url = urllib.parse.urlsplit(args.url)
    if url.scheme == "https":
        context = ssl.create_default_context(cafile=args.cafile)
        connection = http.client.HTTPSConnection(url.hostname, url.port, timeout=args.timeout, context=context)
    else:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=args.timeout)
    with open(args.body, "rb") as f:
        body = f.read()
    headers = {"content-type": "application/json"}
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    connection.request("POST", url.path, body=body, headers=headers)
    response = connection.getresponse()
    events, buffer = [], b""
    try:
        while len(events) < args.count:
            data = response.read1(65536)
            if not data:
                break
            buffer += data
            while b"\n\n" in buffer and len(events) < args.count:
                event, buffer = buffer.split(b"\n\n", 1)
                events.append(event.decode("utf-8", "replace") + "\n\n")
    except (socket.timeout, TimeoutError):
        pass
    # Hang up without reading the rest, as a client that goes away does.
    try:
        connection.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()
    complete = len(events) >= args.count
    print(json.dumps({"status": response.status, "events": events, "complete": complete}))
    sys.exit(0 if complete else 1)


if __name__ == "__main__":
    main()
