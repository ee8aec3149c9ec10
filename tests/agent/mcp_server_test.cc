// The MCP server's protocol edges over a pipe pair (the SDK test, mcp_sdk_test.py, covers the happy paths with the
// official client): bad lines, bad requests, version negotiation, ids, cancellation of a queued call, and end of
// input draining the calls in flight.
#include "agent/mcp_server.h"

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <filesystem>
#include <thread>

#include "base/file.h"
#include "tests/agent/lake_fixture.h"

namespace lr::agent {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

class McpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const fs::path dir = testing::CopyLakeFixture("mcp");
    lsp::PoolOptions pool_options;
    pool_options.lean_command = {LR_SCRIPTED_LEAN_SERVER};
    pool_ = std::make_unique<lsp::ServerPool>(pool_options);
    auto copy = WorkingCopy::Open(dir.string());
    ASSERT_TRUE(copy.ok());
    copy_ = std::move(*copy);
    ToolsOptions options;
    options.search_roots = {dir.string() + "/none"};
    options.build_command = {"sh", "-c", "sleep 30"};
    tools_ = std::make_unique<ToolBox>(*pool_, *copy_, options);
    ASSERT_EQ(::pipe(to_server_), 0);
    ASSERT_EQ(::pipe(from_server_), 0);
    McpOptions mcp;
    mcp.workers = 1;  // one worker: a second call waits in the queue
    server_ = std::thread([this, mcp] { status_ = ServeMcp(*tools_, mcp, to_server_[0], from_server_[1]); });
  }

  void TearDown() override {
    if (to_server_[1] >= 0) ::close(to_server_[1]);
    server_.join();
    ::close(to_server_[0]);
    ::close(from_server_[0]);
    ::close(from_server_[1]);
  }

  void Send(const std::string& line) {
    ASSERT_EQ(::write(to_server_[1], line.data(), line.size()), (ssize_t)line.size());
  }

  Json Next() {
    for (;;) {
      size_t nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        Json m = Json::parse(buffer_.substr(0, nl));
        buffer_.erase(0, nl + 1);
        return m;
      }
      char chunk[4096];
      ssize_t n = ::read(from_server_[0], chunk, sizeof chunk);
      if (n <= 0) return Json();
      buffer_.append(chunk, static_cast<size_t>(n));
    }
  }

  void CloseInput() {
    ::close(to_server_[1]);
    to_server_[1] = -1;
  }

  std::unique_ptr<lsp::ServerPool> pool_;
  std::unique_ptr<WorkingCopy> copy_;
  std::unique_ptr<ToolBox> tools_;
  int to_server_[2] = {-1, -1};
  int from_server_[2] = {-1, -1};
  std::thread server_;
  Status status_;
  std::string buffer_;
};

TEST_F(McpServerTest, AnswersBadInputWithJsonRpcErrors) {
  Send("this is not json\n");
  Json r = Next();
  EXPECT_EQ(r["error"]["code"], -32700);
  EXPECT_TRUE(r["id"].is_null());
  Send("[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]\n");  // batches are not part of the protocol
  EXPECT_EQ(Next()["error"]["code"], -32600);
  Send("{\"jsonrpc\":\"1.0\",\"id\":2,\"method\":\"ping\"}\n");
  EXPECT_EQ(Next()["error"]["code"], -32600);
  Send("{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"resources/list\"}\n");
  r = Next();
  EXPECT_EQ(r["id"], 3);
  EXPECT_EQ(r["error"]["code"], -32601);
  Send("{\"jsonrpc\":\"2.0\",\"id\":\"s\",\"method\":\"tools/call\",\"params\":{\"name\":\"nope\"}}\n");
  r = Next();
  EXPECT_EQ(r["id"], "s");
  EXPECT_EQ(r["error"]["code"], -32602);
  Send(
      "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/"
      "call\",\"params\":{\"name\":\"read_file\",\"arguments\":[1]}}\n");
  EXPECT_EQ(Next()["error"]["code"], -32602);
  Send("\n  \n{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"ping\"}\r\n");  // blank lines skipped, CRLF accepted
  r = Next();
  EXPECT_EQ(r["id"], 5);
  EXPECT_EQ(r["result"], Json::object());
}

TEST_F(McpServerTest, NegotiatesTheProtocolRevision) {
  EXPECT_EQ(NegotiateProtocolVersion("2024-11-05"), "2024-11-05");
  EXPECT_EQ(NegotiateProtocolVersion("2025-06-18"), "2025-06-18");
  EXPECT_EQ(NegotiateProtocolVersion("2099-01-01"), "2025-11-25");
  Send(
      "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-03-26\","
      "\"capabilities\":{},\"clientInfo\":{\"name\":\"t\",\"version\":\"0\"}}}\n");
  Json r = Next();
  EXPECT_EQ(r["result"]["protocolVersion"], "2025-03-26");
  EXPECT_EQ(r["result"]["serverInfo"]["name"], "leanrotor");
  EXPECT_TRUE(r["result"]["capabilities"].contains("tools"));
  Send("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n");
  Send("{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}\n");
  r = Next();
  EXPECT_EQ(r["id"], 2);  // the notification got no answer
  EXPECT_EQ(r["result"]["tools"].size(), tools_->Definitions().size());
  for (const Json& t : r["result"]["tools"]) EXPECT_EQ(t["inputSchema"]["type"], "object");
}

TEST_F(McpServerTest, ACancelledQueuedCallNeverRunsAndIsNotAnswered) {
  // The only worker runs a slow build; the read behind it waits in the queue and is cancelled there.
  Send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"lean_build\"}}\n");
  Send(
      "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"read_file\","
      "\"arguments\":{\"path\":\"lakefile.lean\"}}}\n");
  Send("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":2}}\n");
  Send("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":1,\"reason\":\"x\"}}\n");
  Send("{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"ping\"}\n");
  EXPECT_EQ(Next()["id"], 3);  // answered at once, on the reader thread
  Send(
      "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/call\",\"params\":{\"name\":\"read_file\","
      "\"arguments\":{\"path\":\"../x\"}}}\n");
  Json r = Next();  // neither 1 (cancelled while running: the build was killed) nor 2 (cancelled in the queue)
  EXPECT_EQ(r["id"], 4);
  EXPECT_EQ(r["result"]["isError"], true);
  EXPECT_NE(r["result"]["content"][0]["text"].get<std::string>().find("outside the project"), std::string::npos);
  EXPECT_FALSE(r["result"].contains("structuredContent"));
}

TEST_F(McpServerTest, EndOfInputAnswersTheCallsInFlightFirst) {
  Send(
      "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"lean_goal\","
      "\"arguments\":{\"file_path\":\"Sorries/Basic.lean\",\"line\":9}}}\n");
  CloseInput();
  Json r = Next();
  EXPECT_EQ(r["id"], 7);
  EXPECT_EQ(r["result"]["structuredContent"]["goals_before"], Json::array({"⊢ double 0 = 0"}));
  server_.join();
  server_ = std::thread([] {});
  EXPECT_TRUE(status_.ok()) << status_.ToString();
}

}  // namespace
}  // namespace lr::agent
