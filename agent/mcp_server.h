// `leanrotor mcp`: the ToolBox (agent/tools.h) as a Model Context Protocol server on stdio.
//
// Transport: JSON-RPC 2.0, one message per line (UTF-8, no embedded newlines), requests in on `in_fd`, responses and
// notifications out on `out_fd`. Lifecycle: `initialize` answers with the client's protocol revision when this
// server speaks it (2024-11-05, 2025-03-26, 2025-06-18, 2025-11-25), else the newest of those, with the `tools`
// capability and serverInfo; `notifications/initialized` is accepted; `ping` answers {}. `tools/list` returns every
// tool with its JSON Schema. `tools/call` runs on a pool of worker threads, so many calls are in flight at once (the
// Lean work itself is bounded by the server pool); the result is `content` [{type: text, text}] plus
// `structuredContent`, with `isError` for a tool error. A request carrying `_meta.progressToken` gets
// `notifications/progress` as the tool reports progress. `notifications/cancelled` stops the named call (a queued
// one never starts; a running one sees its cancel flag) and, as the protocol says, no response is sent for it.
//
// Malformed input never stops the server: a line that is not JSON is answered with a parse error (-32700), a
// message that is not a request or notification with -32600, an unknown method with -32601, an unknown tool or bad
// params with -32602. End of input ends Serve after the calls in flight have answered.
#pragma once

#include <string>

#include "agent/tools.h"
#include "base/status.h"

namespace lr::agent {

struct McpOptions {
  int workers = 16;  // tool calls run at once; more wait in a queue
  std::string server_name = "leanrotor";
  std::string server_version = "0";
};

// The protocol revision `initialize` answers when the client asks for `requested`.
std::string NegotiateProtocolVersion(const std::string& requested);

// Serves one client until end of input. kIo when the output cannot be written (the client is gone).
Status ServeMcp(ToolBox& tools, const McpOptions& options, int in_fd, int out_fd);

}  // namespace lr::agent
