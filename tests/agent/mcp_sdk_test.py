#!/usr/bin/env python3
"""`leanrotor mcp` driven by the official MCP Python SDK (PyPI `mcp`) as the client, against the scripted Lean server.

Run by ctest (tests/agent/CMakeLists.txt). Each check prints one line; any failure exits 1 naming what failed.
  - handshake (protocol revision, serverInfo, the tools capability), ping, tools/list with JSON Schemas;
  - every tool called once on a copy of tests/fixtures/lake_sorries, results in lean-lsp-mcp's shapes;
  - errors: paths outside the project refused by every path tool, bad arguments, an unknown tool (JSON-RPC error);
  - progress notifications from lean_build for a request with a progress token;
  - cancellation: a cancelled lean_build has its process killed, and the server keeps answering;
  - 100 tool calls in flight at once, every answer right;
  - a scripted Leanstral-style agent (goal -> local search -> multi_attempt -> edit -> diagnostics) completes every
    sorry of the fixture through the server; the files on disk stay as they were (edits live in the working copy).
"""
import json
import os
import shutil
import tempfile
import time

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from checks import arguments, check, finish

FILE = "Sorries/Basic.lean"


def payload(result):
    """The structured result of a successful call (and its text, which must be the same JSON)."""
    text = result.content[0].text
    if result.is_error:
        raise AssertionError("tool error: " + text)
    data = json.loads(text)
    if result.structured_content is not None and result.structured_content != data:
        raise AssertionError("structuredContent differs from the text content")
    return data


def make_project(workdir, fixture):
    project = os.path.join(workdir, "project")
    shutil.copytree(fixture, project)
    with open(os.path.join(workdir, "secret.lean"), "w") as f:
        f.write("theorem secret : True := trivial\n")
    os.symlink(workdir, os.path.join(project, "escape"))
    build = os.path.join(workdir, "build.sh")
    with open(build, "w") as f:
        f.write("echo '[1/2] Building Sorries.Lemmas'\n"
                "echo '[2/2] Building Sorries.Basic'\n"
                "if [ -f slow ]; then echo $$ > build.pid; exec sleep 120; fi\n")
    return project, build


async def check_every_tool(s, project):
    r = payload(await s.call_tool("lean_file_outline", {"file_path": FILE}))
    check([d["name"] for d in r["declarations"]] == ["double", "double_zero", "swap_add", "double_eq"],
          "lean_file_outline lists the declarations")
    r = payload(await s.call_tool("lean_diagnostic_messages", {"file_path": FILE}))
    check(len(r["items"]) == 3 and all("sorry" in i["message"] for i in r["items"]) and r["items"][0]["line"] == 7,
          "lean_diagnostic_messages: three sorry warnings, 1-based lines")
    r = payload(await s.call_tool("lean_goal", {"file_path": os.path.join(project, FILE), "line": 9}))
    check(r["goals_before"] == ["⊢ double 0 = 0"] and r["line_context"] == "  sorry", "lean_goal before/after")
    r = payload(await s.call_tool("lean_term_goal", {"file_path": FILE, "line": 9}))
    check(r["expected_type"] == "⊢ Prop", "lean_term_goal")
    r = payload(await s.call_tool("lean_hover_info", {"file_path": FILE, "line": 7, "column": 23}))
    check(r["symbol"] == "double" and r["info"] == "double (n : Nat) : Nat", "lean_hover_info")
    r = payload(await s.call_tool("lean_completions", {"file_path": FILE, "line": 7, "column": 26}))
    check(r["items"] and r["items"][0]["label"] == "double", "lean_completions")
    r = payload(await s.call_tool("lean_declaration_file", {"file_path": FILE, "symbol": "double"}))
    check(r["file_path"].endswith(FILE) and r["content"].startswith("def double"), "lean_declaration_file")
    r = payload(await s.call_tool("lean_multi_attempt", {"file_path": FILE, "line": 9, "snippets": ["rfl", "simp"]}))
    check([i["goals"] for i in r["items"]] == [[], ["⊢ double 0 = 0"]], "lean_multi_attempt: goals per snippet")
    r = payload(await s.call_tool("lean_run_code", {"code": "theorem t : True := by\n  decide\n"}))
    check(r["success"] is True and r["diagnostics"] == [], "lean_run_code")
    r = payload(await s.call_tool("lean_local_search", {"query": "add_swap"}))
    check([i["name"] for i in r["items"]] == ["add_swap_helper"], "lean_local_search")
    r = payload(await s.call_tool("lean_build", {}))
    check(r["success"] is True and "[2/2] Building Sorries.Basic" in r["output"], "lean_build")
    r = payload(await s.call_tool("read_file", {"path": FILE, "start_line": 9, "end_line": 9}))
    check(r["content"] == " 9:   sorry\n" or r["content"] == "9:   sorry\n", "read_file with line numbers")
    r = payload(await s.call_tool("list_files", {"pattern": "*.lean"}))
    check(r["items"] == ["Sorries/Basic.lean", "Sorries/Lemmas.lean", "lakefile.lean"], "list_files")
    r = payload(await s.call_tool("write_file", {"path": "Scratch.lean", "content": "-- scratch\n"}))
    check(r["lines"] == 1 and not os.path.exists(os.path.join(project, "Scratch.lean")),
          "write_file goes to the working copy only")
    r = payload(await s.call_tool("edit_file", {"path": "Scratch.lean", "old_text": "scratch", "new_text": "note"}))
    check(r["line"] == 1, "edit_file")


async def check_errors(s):
    outside = ["../secret.lean", "escape/secret.lean", "/etc/passwd"]
    calls = [("lean_file_outline", {}), ("lean_diagnostic_messages", {}), ("lean_goal", {"line": 1}),
             ("lean_term_goal", {"line": 1}), ("lean_hover_info", {"line": 1, "column": 1}),
             ("lean_completions", {"line": 1, "column": 1}), ("lean_declaration_file", {"symbol": "secret"}),
             ("lean_multi_attempt", {"line": 1, "snippets": ["rfl"]})]
    refused = 0
    total = 0
    for path in outside:
        for name, extra in calls:
            r = await s.call_tool(name, dict(extra, file_path=path))
            total += 1
            refused += r.is_error and "outside the project" in r.content[0].text
        for name, args in [("read_file", {"path": path}), ("write_file", {"path": path, "content": "x"}),
                           ("edit_file", {"path": path, "old_text": "a", "new_text": "b"}),
                           ("list_files", {"path": path}), ("lean_build", {"lean_project_path": path}),
                           ("lean_local_search", {"query": "secret", "project_root": path})]:
            r = await s.call_tool(name, args)
            total += 1
            refused += r.is_error and ("outside the project" in r.content[0].text or
                                       "not this server's project" in r.content[0].text)
    check(refused == total, f"paths outside the project refused by every path tool ({refused}/{total})")
    r = await s.call_tool("lean_goal", {"file_path": FILE})
    check(r.is_error and "missing required argument `line`" in r.content[0].text, "a missing argument: tool error")
    r = await s.call_tool("lean_goal", {"file_path": FILE, "line": "nine"})
    check(r.is_error and "must be of type integer" in r.content[0].text, "a mistyped argument: tool error")
    try:
        await s.call_tool("no_such_tool", {})
        check(False, "an unknown tool is a JSON-RPC error")
    except MCPError as e:
        check(e.code == -32602 and "unknown tool" in e.message, "an unknown tool is a JSON-RPC error (-32602)")


async def check_progress_and_cancel(s, project):
    seen = []

    async def on_progress(progress, total, message):
        seen.append((progress, total, message))

    payload(await s.call_tool("lean_build", {}, progress_callback=on_progress))
    check(seen == [(1, 2, "Building Sorries.Lemmas"), (2, 2, "Building Sorries.Basic")],
          f"lean_build reports progress with the request's token: {seen}")

    open(os.path.join(project, "slow"), "w").close()
    pid_file = os.path.join(project, "build.pid")
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.call_tool, "lean_build", {})
        with anyio.fail_after(20):
            while not os.path.exists(pid_file) or not open(pid_file).read().strip():
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()  # the SDK sends notifications/cancelled for the abandoned request
    pid = int(open(pid_file).read())
    deadline = time.monotonic() + 10
    alive = True
    while alive and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            await anyio.sleep(0.05)
        except ProcessLookupError:
            alive = False
    check(not alive, "a cancelled lean_build has its process killed")
    os.unlink(os.path.join(project, "slow"))
    await s.send_ping()
    r = payload(await s.call_tool("lean_goal", {"file_path": FILE, "line": 9, "column": 3}))
    check(r["goals"] == ["⊢ double 0 = 0"], "the server answers after a cancellation")


async def check_many_in_flight(s):
    results = {}

    async def one(i):
        if i % 3 == 0:
            r = await s.call_tool("lean_goal", {"file_path": FILE, "line": 9, "column": 3})
            results[i] = payload(r)["goals"] == ["⊢ double 0 = 0"]
        elif i % 3 == 1:
            r = await s.call_tool("lean_diagnostic_messages", {"file_path": FILE, "start_line": 11, "end_line": 11})
            results[i] = len(payload(r)["items"]) == 1
        else:
            r = await s.call_tool("read_file", {"path": FILE, "start_line": i % 19 + 1, "end_line": i % 19 + 1})
            results[i] = payload(r)["start_line"] == i % 19 + 1

    start = time.monotonic()
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(one, i)
    check(len(results) == 100 and all(results.values()),
          f"100 calls in flight at once, all right ({sum(results.values())}/100, {time.monotonic() - start:.2f} s)")


async def scripted_agent(s, project):
    """What Leanstral does: goal at each sorry, search for lemmas, try snippets, edit in the one that closes the goal,
    then ask for diagnostics."""
    before = open(os.path.join(project, FILE)).read()
    for _ in range(10):
        diags = payload(await s.call_tool("lean_diagnostic_messages", {"file_path": FILE}))
        sorries = [d for d in diags["items"] if "sorry" in d["message"]]
        if not sorries:
            break
        outline = payload(await s.call_tool("lean_file_outline", {"file_path": FILE}))
        decl = next(d for d in outline["declarations"] if d["start_line"] == sorries[0]["line"])
        text = payload(await s.call_tool("read_file", {"path": FILE, "start_line": decl["start_line"],
                                                       "end_line": decl["end_line"]}))["content"]
        sorry_line = next(int(l.split(":")[0]) for l in text.splitlines() if l.split(":", 1)[1].strip() == "sorry")
        goal = payload(await s.call_tool("lean_goal", {"file_path": FILE, "line": sorry_line}))["goals_before"][0]
        snippets = ["simp"]
        if "+" in goal and "b + a" in goal:
            hits = payload(await s.call_tool("lean_local_search", {"query": "add_swap"}))["items"]
            snippets += [f"exact {h['name']} a b" for h in hits]
        snippets.append("rfl")
        tried = payload(await s.call_tool("lean_multi_attempt", {"file_path": FILE, "line": sorry_line,
                                                                 "snippets": snippets}))["items"]
        good = next(t for t in tried if t["goals"] == [] and not any(d["severity"] == "error"
                                                                      for d in t["diagnostics"]))
        header = text.splitlines()[sorry_line - decl["start_line"] - 1].split(": ", 1)[1]
        payload(await s.call_tool("edit_file", {"path": FILE, "old_text": header + "\n  sorry",
                                                "new_text": header + "\n  " + good["snippet"]}))
    diags = payload(await s.call_tool("lean_diagnostic_messages", {"file_path": FILE}))
    check(diags["items"] == [], "the scripted agent completed every sorry through the MCP server")
    body = payload(await s.call_tool("read_file", {"path": FILE}))["content"]
    check("exact add_swap_helper a b" in body, "the lemma found by lean_local_search is in the proof")
    check(open(os.path.join(project, FILE)).read() == before, "the file on disk is unchanged (working copy)")


async def main(args):
    workdir = tempfile.mkdtemp(prefix="lr_mcp_sdk_")
    try:
        project, build = make_project(workdir, args.fixture)
        params = StdioServerParameters(
            command=args.leanrotor,
            args=["mcp", "--project", project, "--lean-cmd", args.lean_server, "--build-command", "sh " + build,
                  "--search-root", os.path.join(workdir, "no_toolchain")],
            cwd=project)
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as s:
                init = await s.initialize()
                check(init.protocol_version == "2025-11-25" and init.server_info.name == "leanrotor" and
                      init.capabilities.tools is not None, f"initialize: {init.protocol_version}")
                await s.send_ping()
                tools = (await s.list_tools()).tools
                check(len(tools) == 15 and all(t.input_schema["type"] == "object" for t in tools),
                      "tools/list: 15 tools with JSON Schemas")
                await check_every_tool(s, project)
                await check_errors(s)
                await check_progress_and_cancel(s, project)
                await check_many_in_flight(s)
                await scripted_agent(s, project)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    finish()


if __name__ == "__main__":
    anyio.run(main, arguments())
