#!/usr/bin/env python3
"""`leanrotor batch --style agent` and `leanrotor prove --style agent` end to end, through the OpenAI tools API.

A scripted OpenAI-compatible endpoint (streamed chat completions with `tool_calls` deltas) plays a Leanstral-like
agent: diagnostics -> read the sorry's lines -> goal -> local search (for a commuted sum) -> multi_attempt -> edit ->
diagnostics, until no sorry is left. Lean is the scripted Lean server. Checks: the tools offered in each request,
the repository task's result line (proved, diff, trace file with every call), the project left untouched by batch,
and prove writing the accepted proofs into the file. Run by ctest (tests/agent/CMakeLists.txt); exits 1 naming
each failed check.
"""
import json
import os
import shutil
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from checks import arguments, check, finish

FILE = "Sorries/Basic.lean"
TOOLS_SEEN = []


def result_of(messages, tool):
    """The latest result of `tool` in the conversation, parsed."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.get("role") != "assistant":
            continue
        for call in m.get("tool_calls") or []:
            if call["function"]["name"] != tool:
                continue
            for r in messages[i + 1:]:
                if r.get("role") == "tool" and r.get("tool_call_id") == call["id"]:
                    try:
                        return json.loads(r["content"])
                    except ValueError:
                        return {}
    return {}


def next_step(messages, file):
    """The agent's next reply: (text, [(name, arguments)])."""
    last = [m for m in messages if m.get("role") == "assistant"]
    calls = (last[-1].get("tool_calls") or []) if last else []
    step = calls[-1]["function"]["name"] if calls else ""
    if step in ("", "edit_file"):
        return "", [("lean_diagnostic_messages", {"file_path": file})]
    if step == "lean_diagnostic_messages":
        sorries = [d for d in result_of(messages, step).get("items", []) if "sorry" in d["message"]]
        if not sorries:
            return "All proofs are complete.", []
        line = sorries[0]["line"]
        return "", [("read_file", {"path": file, "start_line": line, "end_line": line + 3})]
    if step == "read_file":
        sorry_line = locate(result_of(messages, "read_file"))[0]
        return "", [("lean_goal", {"file_path": file, "line": sorry_line})]
    sorry_line, header = locate(result_of(messages, "read_file"))
    if step == "lean_goal":
        goal = (result_of(messages, "lean_goal").get("goals_before") or [""])[0]
        if "b + a" in goal:
            return "", [("lean_local_search", {"query": "add_swap"})]
        return "", [("lean_multi_attempt", {"file_path": file, "line": sorry_line, "snippets": ["simp", "rfl"]})]
    if step == "lean_local_search":
        hits = ["exact %s a b" % h["name"] for h in result_of(messages, step).get("items", [])]
        return "", [("lean_multi_attempt", {"file_path": file, "line": sorry_line,
                                            "snippets": ["simp"] + hits + ["rfl"]})]
    if step == "lean_multi_attempt":
        tried = result_of(messages, step).get("items", [])
        good = next(t["snippet"] for t in tried
                    if not t["goals"] and not any(d["severity"] == "error" for d in t["diagnostics"]))
        return "", [("edit_file", {"path": file, "old_text": header + "\n  sorry",
                                   "new_text": header + "\n  " + good})]
    return "I am lost.", []


def locate(read):
    previous = ""
    for line in read.get("content", "").splitlines():
        number, _, body = line.partition(": ")
        if body == "  sorry":
            return int(number), previous
        previous = body
    return 0, ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    file = FILE

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        TOOLS_SEEN.append(sorted(t["function"]["name"] for t in body.get("tools", [])))
        text, calls = next_step(body["messages"], Handler.file)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        chunk = {"id": "scripted", "object": "chat.completion.chunk", "model": body.get("model", "")}

        def send(obj):
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

        if text:
            send(dict(chunk, choices=[{"index": 0, "delta": {"content": text}, "finish_reason": None}]))
        for i, (name, args) in enumerate(calls):
            arguments = json.dumps(args)
            half = len(arguments) // 2  # arguments arrive in two deltas, as streaming servers send them
            send(dict(chunk, choices=[{"index": 0, "delta": {"tool_calls": [
                {"index": i, "id": "call%05d" % len(body["messages"]) + str(i), "type": "function",
                 "function": {"name": name, "arguments": arguments[:half]}}]}, "finish_reason": None}]))
            send(dict(chunk, choices=[{"index": 0, "delta": {"tool_calls": [
                {"index": i, "function": {"arguments": arguments[half:]}}]}, "finish_reason": None}]))
        send(dict(chunk, choices=[{"index": 0, "delta": {}, "finish_reason": "tool_calls" if calls else "stop"}]))
        send(dict(chunk, choices=[], usage={"prompt_tokens": 100, "completion_tokens": 12, "total_tokens": 112}))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def main(args):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:%d/v1" % server.server_address[1]
    work = tempfile.mkdtemp(prefix="lr_agent_cli_")
    common = ["--style", "agent", "--remote", url, "--model-id", "scripted-leanstral",
              "--lean-cmd", args.lean_server, "--max-tool-calls", "60"]
    try:
        project = os.path.join(work, "project")
        shutil.copytree(args.fixture, project)
        before = open(os.path.join(project, FILE)).read()
        with open(os.path.join(work, "tasks.jsonl"), "w") as f:
            f.write(json.dumps({"name": "all_sorries", "project": "project", "file": FILE,
                                "theorems": "all sorries"}) + "\n")
        out = os.path.join(work, "results.jsonl")
        run = subprocess.run([args.leanrotor, "batch", os.path.join(work, "tasks.jsonl"), "--out", out, "-k", "1"]
                             + common, capture_output=True, text=True, timeout=240)
        check(run.returncode == 0, "batch --style agent exits 0: " + run.stderr[-300:])
        lines = [json.loads(l) for l in open(out)] if os.path.exists(out) else [{}]
        r = lines[0]
        check(r.get("proved") is True and r.get("stop_reason") == "proved", "the repository task is proved")
        check("+  exact add_swap_helper a b" in r.get("diff", ""), "the result's diff holds the searched lemma")
        trace = [json.loads(l) for l in open(r["trace"])] if r.get("trace") and os.path.exists(r["trace"]) else []
        tools = [t["tool"] for t in trace if "tool" in t]
        check({"lean_diagnostic_messages", "read_file", "lean_goal", "lean_local_search", "lean_multi_attempt",
               "edit_file"} <= set(tools), "the trace holds every call: " + ",".join(sorted(set(tools))))
        check(sum(1 for t in trace if t.get("accepted")) == 3, "the trace holds three accepted judgements")
        check(open(os.path.join(project, FILE)).read() == before, "batch leaves the project's files untouched")
        check(TOOLS_SEEN and "lean_multi_attempt" in TOOLS_SEEN[0] and len(TOOLS_SEEN[0]) == 15,
              "every request offers the 15 tools through the OpenAI tools API")

        Handler.file = os.path.join(project, FILE)  # prove names the file by its absolute path
        run = subprocess.run([args.leanrotor, "prove", os.path.join(project, FILE)] + common,
                             capture_output=True, text=True, timeout=240)
        check(run.returncode == 0, "prove --style agent exits 0: " + run.stdout[-300:] + run.stderr[-300:])
        after = open(os.path.join(project, FILE)).read()
        check("sorry" not in after.split("-/", 1)[1] and "exact add_swap_helper a b" in after,
              "prove wrote the accepted proofs into the file")
    finally:
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main(arguments())
