// LocalModel's engine on the real default model: requests from several threads share decode steps (continuous
// batching) and each decodes what it decodes alone; a request that does not fit beside the running ones waits for
// their pages; a cancelled request ends without disturbing the others.
#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include <gtest/gtest.h>

#include "tests/inference/default_model.h"

namespace lr::inference {
namespace {

// Plain text the model continues for a long while without an end-of-turn token.
const char* kFirst =
    "The GNU General Public License is a free, copyleft license for software and other kinds of works. The licenses "
    "for most software and other practical works are designed to take away your freedom to share and change";
const char* kSecond =
    "theorem add_zero_example (n : Nat) : n + 0 = n := by\n  induction n with\n  | zero => rfl\n  | succ k ih =>";

// Waits up to 60 s for `pred`, polling.
template <typename Pred>
bool WaitFor(Pred pred) {
  for (int i = 0; i < 6000; ++i) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

TEST(LocalModelEngine, ConcurrentRequestsShareStepsAndDecodeWhatTheyDecodeAlone) {
  std::unique_ptr<LocalModel> lm = OpenDefaultModel(512, 64);
  ASSERT_TRUE(lm);
  const std::vector<int32_t> first = Encode(*lm, kFirst), second = Encode(*lm, kSecond);
  auto alone_first = lm->Generate(first, Greedy(96), 2, nullptr, nullptr);
  auto alone_second = lm->Generate(second, Greedy(32), 3, nullptr, nullptr);
  ASSERT_TRUE(alone_first.ok() && alone_second.ok());
  ASSERT_EQ((*alone_first)[0].finish_reason, "length");  // long enough to overlap with the second request
  const EngineStats before = lm->engine_stats();
  EXPECT_EQ(before.batched_steps, 0);
  EXPECT_EQ(before.peak_requests, 1);

  // The second request starts while the first streams: on the first's first piece, its caller (blocked in its
  // callback while the engine goes on) launches the second and waits until that one streams too.
  std::future<Result<std::vector<Choice>>> second_run;
  std::promise<void> second_streams;
  bool second_streamed = false;
  bool launched = false;
  GenerateStats first_stats, second_stats;
  auto together_first = lm->Generate(
      first, Greedy(96), 2,
      [&](int, std::string_view) {
        if (launched) return true;
        launched = true;
        second_run = std::async(std::launch::async, [&] {
          bool told = false;
          return lm->Generate(
              second, Greedy(32), 3,
              [&](int, std::string_view) {
                if (!told) second_streams.set_value();
                told = true;
                return true;
              },
              &second_stats);
        });
        second_streamed = second_streams.get_future().wait_for(std::chrono::seconds(60)) == std::future_status::ready;
        return true;
      },
      &first_stats);
  ASSERT_TRUE(launched);
  auto together_second = second_run.get();
  EXPECT_TRUE(second_streamed);
  ASSERT_TRUE(together_first.ok()) << together_first.status().ToString();
  ASSERT_TRUE(together_second.ok()) << together_second.status().ToString();

  for (size_t c = 0; c < 2; ++c) EXPECT_EQ((*together_first)[c].text, (*alone_first)[c].text) << c;
  for (size_t c = 0; c < 3; ++c) EXPECT_EQ((*together_second)[c].text, (*alone_second)[c].text) << c;
  const EngineStats after = lm->engine_stats();
  EXPECT_GT(after.batched_steps, 0);
  EXPECT_EQ(after.peak_requests, 2);
  EXPECT_EQ(after.peak_sequences, 5);  // 2 + 3 choices in one step
  EXPECT_EQ(after.running, 0);
  EXPECT_EQ(after.queued, 0);
  EXPECT_EQ(first_stats.generated_tokens, 2 * 96);
  EXPECT_EQ(second_stats.prompt_tokens, static_cast<int>(second.size()));
  const KvStats kv = lm->kv_stats();
  EXPECT_EQ(kv.pages_private + kv.pages_shared, 0);  // every sequence released
}

TEST(LocalModelEngine, CompressedCacheWithSinkAndWindowRowsBatchesExactlyToo) {
  // hx3 keys and values with an f16 sink and a 32-token f16 window (per-sequence rings): two requests sharing steps,
  // one prefilling while the other decodes, decode what each decodes alone.
  LocalModelOptions o;
  o.path = kDefaultModel;
  o.n_ctx = 512;
  o.kv_budget_mib = 64;
  o.kv.k_format = o.kv.v_format = "hx3";
  o.kv.sink_tokens = 1;
  o.kv.window_tokens = 32;
  Result<std::unique_ptr<LocalModel>> opened = LocalModel::Open(o);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  LocalModel& lm = **opened;
  const std::vector<int32_t> first = Encode(lm, kFirst), second = Encode(lm, kSecond);
  // Alone, each from a cold cache (prefix hits start without window rows for the cached part).
  auto alone_first = lm.Generate(first, Greedy(64), 2, nullptr, nullptr);
  Result<std::unique_ptr<LocalModel>> other = LocalModel::Open(o);
  ASSERT_TRUE(other.ok());
  auto alone_second = (*other)->Generate(second, Greedy(24), 2, nullptr, nullptr);
  ASSERT_TRUE(alone_first.ok() && alone_second.ok());

  Result<std::unique_ptr<LocalModel>> shared = LocalModel::Open(o);
  ASSERT_TRUE(shared.ok());
  std::future<Result<std::vector<Choice>>> second_run;
  auto together_first = (*shared)->Generate(
      first, Greedy(64), 2,
      [&](int, std::string_view) {
        if (!second_run.valid())
          second_run = std::async(std::launch::async,
                                  [&] { return (*shared)->Generate(second, Greedy(24), 2, nullptr, nullptr); });
        return true;
      },
      nullptr);
  ASSERT_TRUE(together_first.ok()) << together_first.status().ToString();
  auto together_second = second_run.get();
  ASSERT_TRUE(together_second.ok()) << together_second.status().ToString();
  for (size_t c = 0; c < 2; ++c) {
    EXPECT_EQ((*together_first)[c].text, (*alone_first)[c].text) << c;
    EXPECT_EQ((*together_second)[c].text, (*alone_second)[c].text) << c;
  }
  EXPECT_GT((*shared)->engine_stats().batched_steps, 0);
}

TEST(LocalModelEngine, RequestWaitsForPagesOthersReserved) {
  // 16 MiB of f16 KV: 23 pages of 32 tokens. Each request reserves its prompt's 2 pages and 2 x 7 pages for its
  // choices (16): two do not fit together, so the second waits until the first ends.
  std::unique_ptr<LocalModel> lm = OpenDefaultModel(512, 16);
  ASSERT_TRUE(lm);
  ASSERT_LT(lm->kv_stats().pages_total, 2 * 16);
  const std::vector<int32_t> first = Encode(*lm, kFirst), second = Encode(*lm, kSecond);
  ASSERT_LE(first.size(), 64u);
  auto alone_second = lm->Generate(second, Greedy(200), 2, nullptr, nullptr);
  ASSERT_TRUE(alone_second.ok());

  std::future<Result<std::vector<Choice>>> second_run;
  bool queued_while_first_ran = false;
  bool launched = false;
  auto first_run = lm->Generate(
      first, Greedy(180), 2,
      [&](int, std::string_view) {
        if (launched) return true;
        launched = true;
        second_run =
            std::async(std::launch::async, [&] { return lm->Generate(second, Greedy(200), 2, nullptr, nullptr); });
        queued_while_first_ran = WaitFor([&] { return lm->engine_stats().queued == 1; });
        return true;
      },
      nullptr);
  ASSERT_TRUE(first_run.ok()) << first_run.status().ToString();
  auto second_result = second_run.get();
  ASSERT_TRUE(second_result.ok()) << second_result.status().ToString();
  EXPECT_TRUE(queued_while_first_ran);
  EXPECT_EQ(lm->engine_stats().peak_requests, 1);
  for (size_t c = 0; c < 2; ++c) EXPECT_EQ((*second_result)[c].text, (*alone_second)[c].text) << c;
}

TEST(LocalModelEngine, CancelledRequestEndsAndTheOtherGoesOn) {
  std::unique_ptr<LocalModel> lm = OpenDefaultModel(512, 64);
  ASSERT_TRUE(lm);
  const std::vector<int32_t> first = Encode(*lm, kFirst), second = Encode(*lm, kSecond);
  auto alone_second = lm->Generate(second, Greedy(48), 1, nullptr, nullptr);
  ASSERT_TRUE(alone_second.ok());

  std::future<Result<std::vector<Choice>>> second_run;
  int pieces = 0;
  auto cancelled = lm->Generate(
      first, Greedy(200), 2,
      [&](int, std::string_view) {
        if (++pieces == 1)
          second_run =
              std::async(std::launch::async, [&] { return lm->Generate(second, Greedy(48), 1, nullptr, nullptr); });
        // Cancel once the second request is running beside this one.
        return !WaitFor([&] { return lm->engine_stats().running == 2; });
      },
      nullptr);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status().ToString();
  for (const Choice& c : *cancelled) {
    EXPECT_EQ(c.finish_reason, "cancelled");
    EXPECT_LT(c.completion_tokens, 200);
  }
  auto second_result = second_run.get();
  ASSERT_TRUE(second_result.ok()) << second_result.status().ToString();
  EXPECT_EQ((*second_result)[0].text, (*alone_second)[0].text);
  EXPECT_EQ(lm->engine_stats().running, 0);
  const KvStats kv = lm->kv_stats();
  EXPECT_EQ(kv.pages_private + kv.pages_shared, 0);
}

TEST(LocalModelEngine, BadRequestsFailBeforeTheEngine) {
  std::unique_ptr<LocalModel> lm = OpenDefaultModel(512, 16);
  ASSERT_TRUE(lm);
  const std::vector<int32_t> outside = {1, 2, 1 << 30};
  EXPECT_EQ(lm->Generate(outside, Greedy(4), 1, nullptr, nullptr).status().code(), StatusCode::kInvalidArgument);
  const std::vector<int32_t> ok = {1, 2, 3};
  EXPECT_EQ(lm->Generate(ok, Greedy(4), 0, nullptr, nullptr).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(lm->Generate(ok, Greedy(600), 1, nullptr, nullptr).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(lm->engine_stats().steps, 0);
}

TEST(LocalModelEngine, TheCancelFlagStopsARequestDuringItsPrefill) {
  LocalModelOptions o;
  o.path = kDefaultModel;
  o.n_ctx = 2048;
  o.kv_budget_mib = 128;
  o.prefill_chunk = 32;  // many prefill steps: the flag is seen between two of them
  Result<std::unique_ptr<LocalModel>> lm = LocalModel::Open(o);
  ASSERT_TRUE(lm.ok()) << lm.status().ToString();
  std::string text;
  while (Encode(**lm, text).size() < 1500) text += std::string(kFirst) + " ";
  const std::vector<int32_t> prompt = Encode(**lm, text);
  // The flag is set once the prefill has run two of its ~47 steps.
  std::atomic<bool> cancel{false};
  std::thread canceller([&] {
    WaitFor([&] { return (*lm)->engine_stats().steps >= 2; });
    cancel.store(true);
  });
  GenerateStats stats;
  auto r = (*lm)->Generate(prompt, Greedy(16), 2, nullptr, &stats, &cancel);
  canceller.join();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 2u);
  for (const Choice& c : *r) EXPECT_EQ(c.finish_reason, "cancelled");
  EXPECT_EQ(stats.generated_tokens, 0);
  const long full_prefill = static_cast<long>(prompt.size()) / o.prefill_chunk;
  EXPECT_LT((*lm)->engine_stats().steps, full_prefill / 2) << "the prefill went on after the cancel";
  // The model is still usable.
  auto next = (*lm)->Generate(Encode(**lm, kSecond), Greedy(4), 1, nullptr, nullptr);
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  EXPECT_EQ((*next)[0].finish_reason, "length");
}

}  // namespace
}  // namespace lr::inference
