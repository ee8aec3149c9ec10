#include "lsp/jsonrpc.h"

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <atomic>

namespace lr::lsp {
namespace {

std::string Body(int id) { return Json{{"jsonrpc", "2.0"}, {"id", id}, {"result", id * 10}}.dump(); }

TEST(FrameDecoder, ByteAtATime) {
  FrameDecoder d;
  std::string stream = EncodeFrame(Body(1)) + EncodeFrame(Body(2));
  std::vector<std::string> got;
  for (char c : stream) {
    d.Feed(std::string_view(&c, 1));
    auto next = d.Next();
    ASSERT_TRUE(next.ok()) << next.status().ToString();
    if (next->has_value()) got.push_back(**next);
  }
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], Body(1));
  EXPECT_EQ(got[1], Body(2));
  EXPECT_EQ(d.pending_bytes(), 0u);
}

TEST(FrameDecoder, SeveralMessagesInOneReadAndExtraHeaders) {
  FrameDecoder d;
  std::string typed =
      "Content-Type: application/vscode-jsonrpc; charset=utf-8\r\ncontent-length: " + std::to_string(Body(3).size()) +
      "\r\n\r\n" + Body(3);
  d.Feed(EncodeFrame(Body(1)) + typed + EncodeFrame(Body(2)).substr(0, 10));
  std::vector<std::string> got;
  for (;;) {
    auto next = d.Next();
    ASSERT_TRUE(next.ok());
    if (!next->has_value()) break;
    got.push_back(**next);
  }
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1], Body(3));
  EXPECT_GT(d.pending_bytes(), 0u);  // the start of the third message waits for the rest
}

TEST(FrameDecoder, VeryLargeMessage) {
  std::string big = Json{{"jsonrpc", "2.0"}, {"method", "m"}, {"params", std::string(20 << 20, 'x')}}.dump();
  std::string frame = EncodeFrame(big);
  FrameDecoder d;
  for (size_t off = 0; off < frame.size(); off += 65536) {
    d.Feed(std::string_view(frame).substr(off, 65536));
    auto next = d.Next();
    ASSERT_TRUE(next.ok());
    if (off + 65536 < frame.size()) {
      ASSERT_FALSE(next->has_value());
    } else {
      ASSERT_TRUE(next->has_value());
      EXPECT_EQ((*next)->size(), big.size());
    }
  }
}

TEST(FrameDecoder, BadHeadersAreCorrupt) {
  for (const std::string& bad :
       {std::string("hello world\r\n\r\n{}"), std::string("Content-Length: 12x\r\n\r\n{}"),
        std::string("Content-Type: a\r\n\r\n{}"), std::string("Content-Length: \r\n\r\n"), std::string(9000, 'z')}) {
    FrameDecoder d;
    d.Feed(bad);
    auto next = d.Next();
    ASSERT_FALSE(next.ok()) << bad.substr(0, 30);
    EXPECT_EQ(next.status().code(), StatusCode::kCorrupt);
  }
  FrameDecoder small(100);
  small.Feed("Content-Length: 101\r\n\r\n");
  auto next = small.Next();
  ASSERT_FALSE(next.ok());
  EXPECT_NE(next.status().message().find("over the limit"), std::string::npos);
}

// A Connection to a peer played by the test through two pipes.
class ConnectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::pipe(to_peer_), 0);
    ASSERT_EQ(::pipe(from_peer_), 0);
    ASSERT_EQ(::pipe(peer_err_), 0);
    ::fcntl(to_peer_[1], F_SETFL, O_NONBLOCK);
    ::signal(SIGPIPE, SIG_IGN);
    conn_ = std::make_unique<Connection>(
        "test peer", to_peer_[1], from_peer_[0], peer_err_[0],
        [this](const std::string& m, const Json& p) { notes_.push_back(m); },
        [](const std::string& m, const Json& p) -> std::optional<Json> {
          if (m == "client/registerCapability") return Json();
          return std::nullopt;
        });
  }
  void TearDown() override {
    conn_.reset();
    for (int* p : {to_peer_, from_peer_, peer_err_})
      for (int i = 0; i < 2; ++i)
        if (p[i] >= 0) ::close(p[i]);
  }
  void PeerSend(const std::string& bytes) {
    ASSERT_EQ(::write(from_peer_[1], bytes.data(), bytes.size()), (ssize_t)bytes.size());
  }
  Json PeerRead() {
    while (true) {
      auto next = peer_decoder_.Next();
      if (next.ok() && next->has_value()) return Json::parse(**next);
      char buf[4096];
      ssize_t n = ::read(to_peer_[0], buf, sizeof buf);
      if (n <= 0) return Json();
      peer_decoder_.Feed(std::string_view(buf, n));
    }
  }
  void ClosePeerOutput() {
    ::close(from_peer_[1]);
    from_peer_[1] = -1;
  }

  int to_peer_[2], from_peer_[2], peer_err_[2];
  FrameDecoder peer_decoder_;
  std::vector<std::string> notes_;
  std::unique_ptr<Connection> conn_;
};

TEST_F(ConnectionTest, CorrelatesOutOfOrderResponses) {
  Result<Json> r1 = Status(StatusCode::kInternal, ""), r2 = Status(StatusCode::kInternal, "");
  std::thread t1([&] { r1 = conn_->Request("a", Json::object(), Clock::now() + std::chrono::seconds(5)); });
  Json m1 = PeerRead();
  std::thread t2([&] { r2 = conn_->Request("b", Json::object(), Clock::now() + std::chrono::seconds(5)); });
  Json m2 = PeerRead();
  PeerSend(EncodeFrame(Json{{"jsonrpc", "2.0"}, {"id", m2["id"]}, {"result", "for b"}}.dump()) +
           EncodeFrame(Json{{"jsonrpc", "2.0"}, {"method", "note"}, {"params", {}}}.dump()) +
           EncodeFrame(Json{{"jsonrpc", "2.0"}, {"id", m1["id"]}, {"result", "for a"}}.dump()));
  t1.join();
  t2.join();
  ASSERT_TRUE(r1.ok());
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(*r1, "for a");
  EXPECT_EQ(*r2, "for b");
  EXPECT_EQ(m1["method"], "a");
  EXPECT_EQ(notes_, std::vector<std::string>{"note"});
}

TEST_F(ConnectionTest, TimeoutSendsCancelRequest) {
  auto r = conn_->Request("slow", Json::object(), Clock::now() + std::chrono::milliseconds(50));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kTimeout);
  Json req = PeerRead();
  Json cancel = PeerRead();
  EXPECT_EQ(cancel["method"], "$/cancelRequest");
  EXPECT_EQ(cancel["params"]["id"], req["id"]);
  // A late answer is dropped, and the connection keeps working.
  PeerSend(EncodeFrame(Json{{"jsonrpc", "2.0"}, {"id", req["id"]}, {"result", 1}}.dump()));
  EXPECT_TRUE(conn_->broken().ok());
}

TEST_F(ConnectionTest, ErrorResponsesMapToCodes) {
  std::thread peer([&] {
    Json a = PeerRead();
    PeerSend(EncodeFrame(
        Json{{"jsonrpc", "2.0"}, {"id", a["id"]}, {"error", {{"code", -32902}, {"message", "crashed"}}}}.dump()));
    Json b = PeerRead();
    PeerSend(EncodeFrame(
        Json{{"jsonrpc", "2.0"}, {"id", b["id"]}, {"error", {{"code", -32800}, {"message", "cancelled"}}}}.dump()));
  });
  auto a = conn_->Request("textDocument/waitForDiagnostics", Json::object(), Clock::now() + std::chrono::seconds(5));
  auto b = conn_->Request("x", Json::object(), Clock::now() + std::chrono::seconds(5));
  peer.join();
  EXPECT_EQ(a.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(a.status().message().find("textDocument/waitForDiagnostics"), std::string::npos);
  EXPECT_NE(a.status().message().find("-32902"), std::string::npos);
  EXPECT_EQ(b.status().code(), StatusCode::kCancelled);
}

TEST_F(ConnectionTest, AnswersServerRequests) {
  PeerSend(EncodeFrame(
      Json{{"jsonrpc", "2.0"}, {"id", "r1"}, {"method", "client/registerCapability"}, {"params", {}}}.dump()));
  Json answer = PeerRead();
  EXPECT_EQ(answer["id"], "r1");
  EXPECT_TRUE(answer.contains("result"));
  EXPECT_TRUE(answer["result"].is_null());
  PeerSend(EncodeFrame(Json{{"jsonrpc", "2.0"}, {"id", 7}, {"method", "unknown/thing"}}.dump()));
  Json refused = PeerRead();
  EXPECT_EQ(refused["id"], 7);
  EXPECT_EQ(refused["error"]["code"], kMethodNotFound);
}

TEST_F(ConnectionTest, InvalidJsonBreaksTheConnection) {
  Result<Json> r = Status(StatusCode::kInternal, "");
  std::thread t([&] { r = conn_->Request("a", Json::object(), Clock::now() + std::chrono::seconds(5)); });
  PeerRead();
  PeerSend(EncodeFrame("{not json"));
  t.join();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(r.status().message().find("not a JSON object"), std::string::npos);
  auto later = conn_->Request("b", Json::object(), Clock::now() + std::chrono::seconds(5));
  EXPECT_EQ(later.status().code(), StatusCode::kCorrupt);
}

TEST_F(ConnectionTest, EndOfOutputMidMessageFailsPendingRequests) {
  Result<Json> r = Status(StatusCode::kInternal, "");
  std::thread t([&] { r = conn_->Request("a", Json::object(), Clock::now() + std::chrono::seconds(5)); });
  PeerRead();
  PeerSend("Content-Length: 100\r\n\r\n{\"jsonrpc\":");
  ClosePeerOutput();
  t.join();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(r.status().message().find("middle of a message"), std::string::npos);
}

TEST_F(ConnectionTest, WriteToDeadPeerIsUnavailableNotSigpipe) {
  ::close(to_peer_[0]);
  to_peer_[0] = -1;
  Status s = conn_->Notify("x", Json::object(), Clock::now() + std::chrono::seconds(1));
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_FALSE(conn_->broken().ok());
}

TEST_F(ConnectionTest, WriteToStalledPeerTimesOut) {
  // The peer never reads: the pipe fills and the write must give up at the deadline instead of blocking.
  std::string big(1 << 20, 'x');
  Status s = conn_->Notify("x", Json{{"p", big}}, Clock::now() + std::chrono::milliseconds(100));
  EXPECT_EQ(s.code(), StatusCode::kTimeout);
}

TEST_F(ConnectionTest, CapturesStderr) {
  std::string noise = "not json on stderr\n";
  ASSERT_EQ(::write(peer_err_[1], noise.data(), noise.size()), (ssize_t)noise.size());
  for (int i = 0; i < 200 && conn_->StderrTail().empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(conn_->StderrTail(), noise);
  EXPECT_TRUE(conn_->broken().ok());
}

}  // namespace
}  // namespace lr::lsp
