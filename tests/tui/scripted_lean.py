#!/usr/bin/env python3
"""A scripted Lean language server for the terminal UI test: Lean's LSP framing and messages, judged by rules.

Speaks JSON-RPC over stdio with Content-Length framing, as `lean --server` does: initialize, initialized,
textDocument/didOpen, didChange (full text), didClose, textDocument/waitForDiagnostics (the barrier), $/lean/plainGoal,
$/lean/plainTermGoal, textDocument/hover, textDocument/completion, textDocument/definition,
textDocument/documentSymbol, shutdown, exit. After each open or change it publishes diagnostics for that
version, by these rules (no elaboration happens):
  - a line holding `bad_tactic`: error "unknown tactic 'bad_tactic'" on it;
  - a declaration whose proof holds `sorry`: warning "declaration uses 'sorry'" on its first line;
  - `#print axioms NAME`: information "'NAME' depends on axioms: [propext]".
$/lean/plainGoal inside a declaration's proof answers one goal, "⊢ T", where T is the statement's type (the text
after the last " : " before ":="); outside a proof it answers null. $/lean/plainTermGoal on a declaration's first line
answers {"goal": "⊢ T"}, elsewhere null. The declarations of the open documents answer, in Lean's shapes:
documentSymbol (DocumentSymbol[], kind 6), hover on a declaration's name (its first line up to ":=" in a ```lean
block, with the name's range), definition (LocationLink[]) and completion (a CompletionList of the names that start
with the identifier before the position).
"""
import json
import re
import sys

DECL = re.compile(r"^\s*(?:@\[[^\]]*\]\s*)?(?:private |protected )?(theorem|lemma|example)\b")
NAMED = re.compile(r"^\s*(?:@\[[^\]]*\]\s*)?(?:private |protected )?(?:theorem|lemma|def)\s+([^\s:(]+)")
IDENT = re.compile(r"[A-Za-z0-9_'.!?]")


def read_message(stream):
    length = None
    while True:
        line = stream.readline()
        if not line:
            return None
        line = line.strip()
        if not line:
            break
        key, _, value = line.partition(b":")
        if key.lower() == b"content-length":
            length = int(value)
    return json.loads(stream.read(length))


def write_message(obj):
    body = json.dumps(obj).encode()
    sys.stdout.buffer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    sys.stdout.buffer.flush()


def declarations(lines):
    """(first line, last line, statement type) of each declaration."""
    starts = [i for i, l in enumerate(lines) if DECL.match(l)]
    out = []
    for k, first in enumerate(starts):
        last = (starts[k + 1] if k + 1 < len(starts) else len(lines)) - 1
        while last > first and (not lines[last].strip() or lines[last].startswith("#") or
                                lines[last].startswith("end ")):
            last -= 1
        head = "\n".join(lines[first:last + 1]).split(":=")[0]
        out.append((first, last, " ".join(head.split(" : ")[-1].split())))
    return out


def named(docs):
    """(uri, line, name column, name, signature) of each named declaration of the open documents."""
    out = []
    for uri, text in docs.items():
        for i, l in enumerate(text.split("\n")):
            m = NAMED.match(l)
            if m:
                out.append((uri, i, m.start(1), m.group(1), l[m.start(1):].split(":=")[0].strip()))
    return out


def word_at(line, col):
    a = b = col
    while a > 0 and IDENT.match(line[a - 1]):
        a -= 1
    while b < len(line) and IDENT.match(line[b]):
        b += 1
    return a, b


def line_range(line, a, b):
    return {"start": {"line": line, "character": a}, "end": {"line": line, "character": b}}


def diagnostics(text):
    lines = text.split("\n")
    diags = []

    def add(line, severity, message):
        diags.append({"range": {"start": {"line": line, "character": 0},
                                "end": {"line": line, "character": len(lines[line])}},
                      "severity": severity, "message": message, "source": "Lean 4"})

    for i, l in enumerate(lines):
        if "bad_tactic" in l:
            add(i, 1, "unknown tactic 'bad_tactic'")
        m = re.match(r"#print axioms (\S+)", l)
        if m:
            add(i, 3, "'%s' depends on axioms: [propext]" % m.group(1))
    for first, last, _ in declarations(lines):
        if any(re.search(r"\bsorry\b", l) for l in lines[first:last + 1]):
            add(first, 2, "declaration uses 'sorry'")
    return diags


def main():
    docs = {}
    stdin = sys.stdin.buffer
    while True:
        msg = read_message(stdin)
        if msg is None:
            return
        method, params, mid = msg.get("method"), msg.get("params") or {}, msg.get("id")
        if method is None:
            continue  # a response to a request of ours (none are sent)
        if method in ("textDocument/didOpen", "textDocument/didChange"):
            doc = params["textDocument"]
            text = doc["text"] if method.endswith("didOpen") else params["contentChanges"][-1]["text"]
            docs[doc["uri"]] = text
            write_message({"jsonrpc": "2.0", "method": "textDocument/publishDiagnostics",
                           "params": {"uri": doc["uri"], "version": doc["version"],
                                      "diagnostics": diagnostics(text)}})
            continue
        if method == "textDocument/didClose":
            docs.pop(params["textDocument"]["uri"], None)
            continue
        if method == "exit":
            return
        if mid is None:
            continue  # other notifications: initialized, $/cancelRequest, ...
        result = None
        if method == "initialize":
            result = {"capabilities": {"textDocumentSync": {"openClose": True, "change": 1}, "hoverProvider": True,
                                       "completionProvider": {}, "definitionProvider": True,
                                       "documentSymbolProvider": True},
                      "serverInfo": {"name": "scripted-lean", "version": "0"}}
        elif method == "textDocument/waitForDiagnostics":
            result = {}
        elif method == "$/lean/plainGoal":
            lines = docs.get(params["textDocument"]["uri"], "").split("\n")
            line = params["position"]["line"]
            for first, last, goal_type in declarations(lines):
                if first < line <= last:
                    goal = "⊢ " + goal_type
                    result = {"goals": [goal], "rendered": "```lean\n" + goal + "\n```"}
        elif method == "$/lean/plainTermGoal":
            lines = docs.get(params["textDocument"]["uri"], "").split("\n")
            line = params["position"]["line"]
            for first, _, goal_type in declarations(lines):
                if first == line:
                    result = {"goal": "⊢ " + goal_type, "range": line_range(line, 0, len(lines[line]))}
        elif method == "textDocument/documentSymbol":
            uri = params["textDocument"]["uri"]
            result = [{"name": name, "kind": 6, "range": line_range(line, 0, len(sig)),
                       "selectionRange": line_range(line, col, col + len(name))}
                      for u, line, col, name, sig in named(docs) if u == uri]
        elif method in ("textDocument/hover", "textDocument/definition", "textDocument/completion"):
            lines = docs.get(params["textDocument"]["uri"], "").split("\n")
            line, col = params["position"]["line"], params["position"]["character"]
            text = lines[line] if line < len(lines) else ""
            a, b = word_at(text, min(col, len(text)))
            decls = named(docs)
            if method == "textDocument/completion":
                prefix = text[a:col]
                result = {"isIncomplete": True,
                          "items": [{"label": n, "kind": 3, "detail": sig} for _, _, _, n, sig in decls
                                    if n.startswith(prefix)]}
            else:
                hit = [d for d in decls if d[3] == text[a:b]] if a < b else []
                if hit and method == "textDocument/hover":
                    result = {"contents": {"kind": "markdown", "value": "```lean\n" + hit[0][4] + "\n```"},
                              "range": line_range(line, a, b)}
                elif method == "textDocument/definition":
                    result = [{"originSelectionRange": line_range(line, a, b), "targetUri": u,
                               "targetRange": line_range(dl, 0, len(sig)),
                               "targetSelectionRange": line_range(dl, dc, dc + len(n))}
                              for u, dl, dc, n, sig in hit[:1]]
        elif method == "shutdown":
            result = None
        else:
            write_message({"jsonrpc": "2.0", "id": mid,
                           "error": {"code": -32601, "message": "scripted-lean: no method " + method}})
            continue
        write_message({"jsonrpc": "2.0", "id": mid, "result": result})


if __name__ == "__main__":
    main()
