// What the HTTP path costs per streamed token: SSE framing alone, and a whole request through RemoteModel ->
// Server (loopback) -> a model that produces tokens instantly, against calling that model in-process. The difference
// is the overhead a client of `leanrotor serve` pays on top of decoding.
#include <benchmark/benchmark.h>

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "net/http_sse.h"
#include "net/remote_model.h"
#include "net/serve.h"

namespace lr::net {
namespace {

// Emits max_tokens pieces per choice at once.
class InstantModel : public LanguageModel {
 public:
  std::string Name() const override { return "instant"; }
  Result<Completion> Complete(const CompletionRequest& r, const StreamCallback& on_piece) override {
    Completion c;
    c.choices.resize(r.n);
    for (int t = 0; t < r.sampling.max_tokens; ++t) {
      for (int i = 0; i < r.n; ++i) {
        c.choices[i].text += " tok";
        if (on_piece && !on_piece(i, " tok")) return c;
      }
    }
    for (Choice& ch : c.choices) {
      ch.finish_reason = "length";
      ch.completion_tokens = r.sampling.max_tokens;
    }
    c.usage.completion_tokens = r.n * r.sampling.max_tokens;
    return c;
  }
};

CompletionRequest Request(int n, int tokens) {
  CompletionRequest r;
  r.messages.push_back({"user", "theorem add_zero (n : Nat) : n + 0 = n := by", {}, {}});
  r.n = n;
  r.sampling.max_tokens = tokens;
  return r;
}

void BM_SseFraming(benchmark::State& state) {
  std::string stream;
  for (int i = 0; i < 1000; ++i) {
    nlohmann::json chunk = {
        {"id", "chatcmpl-1"},
        {"object", "chat.completion.chunk"},
        {"choices", {{{"index", 0}, {"delta", {{"content", " simp"}}}, {"finish_reason", nullptr}}}}};
    stream += "data: " + chunk.dump() + "\r\n\r\n";
  }
  const size_t kRead = 1500;  // about one TCP segment per read
  for (auto _ : state) {
    SseParser parser;
    size_t events = 0;
    for (size_t at = 0; at < stream.size(); at += kRead) {
      Status s = parser.Feed(std::string_view(stream).substr(at, kRead), [&](std::string_view data) {
        events += data.size() > 0;
        return Status::Ok();
      });
      benchmark::DoNotOptimize(s);
    }
    benchmark::DoNotOptimize(events);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * stream.size()));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * 1000));
}
BENCHMARK(BM_SseFraming);

void BM_StreamInProcess(benchmark::State& state) {
  InstantModel model;
  const CompletionRequest r = Request(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)));
  size_t bytes = 0;
  for (auto _ : state) {
    Result<Completion> c = model.Complete(r, [&](int, std::string_view p) {
      bytes += p.size();
      return true;
    });
    benchmark::DoNotOptimize(c);
  }
  benchmark::DoNotOptimize(bytes);
  state.SetItemsProcessed(state.iterations() * state.range(0) * state.range(1));
}
BENCHMARK(BM_StreamInProcess)->Args({1, 256})->Args({4, 256});

void BM_StreamOverLoopback(benchmark::State& state) {
  InstantModel model;
  ServeOptions so;
  so.port = 0;
  Server server(model, so);
  if (!server.Start().ok()) {
    state.SkipWithError("server did not start");
    return;
  }
  RemoteOptions ro;
  ro.base_url = "http://127.0.0.1:" + std::to_string(server.port()) + "/v1";
  ro.model = "instant";
  ro.max_attempts = 1;
  std::unique_ptr<RemoteModel> client = std::move(RemoteModel::Create(ro)).value();
  const CompletionRequest r = Request(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)));
  size_t bytes = 0;
  for (auto _ : state) {
    Result<Completion> c = client->Complete(r, [&](int, std::string_view p) {
      bytes += p.size();
      return true;
    });
    if (!c.ok()) {
      state.SkipWithError(c.status().ToString().c_str());
      break;
    }
  }
  benchmark::DoNotOptimize(bytes);
  state.SetItemsProcessed(state.iterations() * state.range(0) * state.range(1));
}
BENCHMARK(BM_StreamOverLoopback)->Args({1, 256})->Args({4, 256})->UseRealTime();

}  // namespace
}  // namespace lr::net

BENCHMARK_MAIN();
