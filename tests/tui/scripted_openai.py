#!/usr/bin/env python3
"""A scripted OpenAI-compatible chat endpoint for the terminal UI test.

Serves POST /v1/chat/completions with stream: true, as leanrotor's RemoteModel speaks it. Replies come from a JSON
script, {"theorem_name": ["reply 1", "reply 2", ...]}: a request gets the next replies of the first theorem name its
messages mention (an empty ```lean block once they run out), one per choice (n). Each reply is streamed in pieces of a
few characters with a pause between them, so that a terminal shows the text arriving and the attempts' states change.

Usage: scripted_openai.py SCRIPT.json PORT_FILE [PAUSE_SECONDS]. Binds 127.0.0.1 on a free port and writes the port to
PORT_FILE once it listens.
"""
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SCRIPT = {}
PAUSE = 0.02
PIECE = 6


def next_reply(messages):
    text = "".join(m.get("content") or "" for m in messages)
    for name, replies in SCRIPT.items():
        if name in text:
            return replies.pop(0) if replies else "```lean\n```"
    return "```lean\n```"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        if not self.path.endswith("/chat/completions"):
            self.send_error(404)
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        n = int(body.get("n", 1))
        replies = [next_reply(body.get("messages", [])) for _ in range(n)]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()

        def send(obj):
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

        chunk = {"id": "scripted", "object": "chat.completion.chunk", "model": body.get("model", "")}
        longest = max(len(r) for r in replies)
        for start in range(0, longest, PIECE):
            choices = [{"index": i, "delta": {"content": r[start:start + PIECE]}, "finish_reason": None}
                       for i, r in enumerate(replies) if start < len(r)]
            send(dict(chunk, choices=choices))
            time.sleep(PAUSE)
        send(dict(chunk, choices=[{"index": i, "delta": {}, "finish_reason": "stop"} for i in range(n)]))
        words = sum(len(r.split()) for r in replies)
        send(dict(chunk, choices=[], usage={"prompt_tokens": 10, "completion_tokens": words,
                                             "total_tokens": 10 + words}))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def main():
    global SCRIPT, PAUSE
    with open(sys.argv[1], encoding="utf-8") as f:
        SCRIPT = json.load(f)
    if len(sys.argv) > 3:
        PAUSE = float(sys.argv[3])
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(sys.argv[2] + ".tmp", sys.argv[2])
    server.serve_forever()


if __name__ == "__main__":
    main()
