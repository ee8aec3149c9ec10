// ServerPool against the scripted Lean server: reuse by import header, eviction, memory caps, retry once.
#include "lsp/server_pool.h"

#include <unistd.h>

#include <gtest/gtest.h>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>

namespace lr::lsp {
namespace {

PoolOptions Scripted(const std::string& scenario, const std::string& once_file = "") {
  PoolOptions o;
  o.lean_command = {LR_SCRIPTED_LEAN_SERVER, "--scenario", scenario};
  if (!once_file.empty()) {
    o.lean_command.push_back("--once-file");
    o.lean_command.push_back(once_file);
  }
  o.client.initialize_timeout = std::chrono::seconds(10);
  return o;
}

CheckRequest Request(const std::string& text, int timeout_ms = 10000) {
  CheckRequest r;
  r.text = text;
  r.timeout = std::chrono::milliseconds(timeout_ms);
  return r;
}

std::string OnceFile(const std::string& name) {
  std::string path = ::testing::TempDir() + "/lr_pool_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove(path);
  return path;
}

const char kCore[] = "theorem t : 1 + 1 = 2 := by\n  sorry\n";
const char kMathlib[] = "import Mathlib\n\ntheorem t : 1 + 1 = 2 := by\n  decide\n";

TEST(ImportHeader, LeadingImportsOnly) {
  EXPECT_EQ(ImportHeader("-- c\n/- doc\n import X -/\nimport Mathlib\nimport Aesop  \n\nopen Nat\nimport Y\n"),
            "import Mathlib\nimport Aesop");
  EXPECT_EQ(ImportHeader("theorem t : True := trivial\n"), "");
}

TEST(ServerPool, ReusesAServerPerImportHeader) {
  ServerPool pool(Scripted("normal"));
  for (int i = 0; i < 3; ++i) {
    auto r = pool.Check(Request(kCore));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(r->UsesSorry());
  }
  EXPECT_EQ(pool.servers_started(), 1u);
  auto m = pool.Check(Request(kMathlib));
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->UsesSorry());
  EXPECT_EQ(pool.servers_started(), 2u);
  EXPECT_EQ(pool.live_servers(), 2u);
  ASSERT_TRUE(pool.Check(Request(kCore)).ok());
  EXPECT_EQ(pool.servers_started(), 2u);
}

TEST(ServerPool, EvictsTheLeastRecentlyUsedWhenFull) {
  PoolOptions o = Scripted("normal");
  o.max_servers = 1;
  ServerPool pool(o);
  ASSERT_TRUE(pool.Check(Request(kCore)).ok());
  ASSERT_TRUE(pool.Check(Request(kMathlib)).ok());
  ASSERT_TRUE(pool.Check(Request(kCore)).ok());
  EXPECT_EQ(pool.servers_started(), 3u);
  EXPECT_EQ(pool.live_servers(), 1u);
}

TEST(ServerPool, ConcurrentChecksUseSeparateServers) {
  PoolOptions o = Scripted("normal");
  o.max_servers = 2;
  ServerPool pool(o);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&] {
      for (int k = 0; k < 3; ++k) ok += pool.Check(Request(kCore)).ok();
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 12);
  EXPECT_LE(pool.servers_started(), 2u);
}

TEST(ServerPool, ResidentCapRetiresAServer) {
  PoolOptions o = Scripted("normal");
  o.server_resident_cap_bytes = 1;  // any real process is over this
  ServerPool pool(o);
  ASSERT_TRUE(pool.Check(Request(kCore)).ok());
  ASSERT_TRUE(pool.Check(Request(kCore)).ok());
  EXPECT_EQ(pool.servers_started(), 2u);
  EXPECT_EQ(pool.live_servers(), 0u);
}

TEST(ServerPool, PoolResidentCapStopsIdleServers) {
  PoolOptions o = Scripted("normal");
  o.pool_resident_cap_bytes = 1;  // the pool is over its cap as soon as one server is idle
  ServerPool pool(o);
  ASSERT_TRUE(pool.Check(Request(kCore)).ok());
  EXPECT_EQ(pool.live_servers(), 0u);
  ASSERT_TRUE(pool.Check(Request(kCore)).ok());
  EXPECT_EQ(pool.servers_started(), 2u);
}

TEST(ServerPool, StopIdleMakesTheNextCheckStartAFreshServer) {
  ServerPool pool(Scripted("normal"));
  ASSERT_TRUE(pool.Check(Request(kCore)).ok());
  EXPECT_EQ(pool.live_servers(), 1u);
  pool.StopIdle();
  EXPECT_EQ(pool.live_servers(), 0u);
  ASSERT_TRUE(pool.Check(Request(kCore)).ok());
  EXPECT_EQ(pool.servers_started(), 2u);
}

TEST(ServerPool, CrashedWorkerIsReplacedAndRetriedOnce) {
  ServerPool pool(Scripted("crash_worker", OnceFile("crash")));
  auto r = pool.Check(Request(kCore));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->UsesSorry());
  EXPECT_EQ(pool.servers_started(), 2u);
}

TEST(ServerPool, HungServerUsesTheWholeDeadlineAndIsReplacedForTheNextCheck) {
  ServerPool pool(Scripted("hang", OnceFile("hang")));
  auto r = pool.Check(Request(kCore, 500));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kTimeout) << r.status().ToString();
  EXPECT_EQ(pool.servers_started(), 1u);  // no time was left for a retry: the timeout bounds the whole check
  auto next = pool.Check(Request(kCore));
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  EXPECT_EQ(pool.servers_started(), 2u);
}

TEST(ServerPool, TheDeadlineCoversInitialize) {
  // The handshake has its own cap (10 s here); the check's 600 ms deadline ends it first.
  ServerPool pool(Scripted("hang_initialize"));
  const auto start = std::chrono::steady_clock::now();
  auto r = pool.Check(Request(kCore, 600));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kTimeout) << r.status().ToString();
  EXPECT_NE(r.status().message().find("initialize"), std::string::npos) << r.status().ToString();
  EXPECT_EQ(pool.servers_started(), 1u);
  EXPECT_LT(seconds, 5.0);  // 10 s when the handshake ignored the deadline, 1.2 s when the retry got its own
}

TEST(ServerPool, CancelStopsTheCheckAndStartsNothing) {
  ServerPool pool(Scripted("hang"));
  std::atomic<bool> cancel{false};
  CheckRequest request = Request(kCore, 60000);
  request.cancel = &cancel;
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    cancel.store(true);
  });
  const auto start = std::chrono::steady_clock::now();
  auto r = pool.Check(request);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  canceller.join();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled) << r.status().ToString();
  EXPECT_EQ(pool.servers_started(), 1u);  // the cancelled server is not taken for a crash and restarted
  EXPECT_EQ(pool.live_servers(), 0u);     // it is stopped
  EXPECT_LT(seconds, 5.0);
  // Already set: nothing starts.
  auto again = pool.Check(request);
  EXPECT_EQ(again.status().code(), StatusCode::kCancelled);
  EXPECT_EQ(pool.servers_started(), 1u);
}

TEST(ServerPool, ATextThatCrashesTheWorkerOnTwoServersIsAVerdict) {
  PoolOptions o = Scripted("normal");
  o.lean_command.insert(o.lean_command.end(), {"--crash-on", "CRASH_HERE"});
  ServerPool pool(o);
  auto r = pool.Check(Request("theorem t : True := by\n  exact CRASH_HERE\n"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_NE(r->worker_crash.find("crashed"), std::string::npos) << r->worker_crash;
  EXPECT_TRUE(r->diagnostics.empty());
  EXPECT_EQ(pool.servers_started(), 2u);  // the first server and the retry's fresh one
  auto clean = pool.Check(Request(kCore));
  ASSERT_TRUE(clean.ok()) << clean.status().ToString();
  EXPECT_TRUE(clean->worker_crash.empty());
  EXPECT_TRUE(clean->UsesSorry());
}

TEST(ServerPool, PersistentFailureIsAnInfrastructureError) {
  for (const char* scenario : {"crash_worker", "die_mid_message", "noise_stdout", "exit_on_start"}) {
    ServerPool pool(Scripted(scenario));
    auto r = pool.Check(Request(kCore));
    ASSERT_FALSE(r.ok()) << scenario;
    EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << scenario << ": " << r.status().ToString();
    EXPECT_NE(r.status().message().find("not a verdict on the proof"), std::string::npos);
    EXPECT_EQ(pool.servers_started(), 2u) << scenario;
  }
  ServerPool hung(Scripted("hang"));
  auto r = hung.Check(Request(kCore, 300));
  EXPECT_EQ(r.status().code(), StatusCode::kTimeout);
}

TEST(ServerPool, MissingLeanIsUnavailableWithInstallHint) {
  const char* old = std::getenv("PATH");
  std::string saved = old ? old : "";
  ::setenv("PATH", "/nonexistent", 1);
  ServerPool pool(PoolOptions{});
  auto r = pool.Check(Request(kCore));
  ::setenv("PATH", saved.c_str(), 1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(r.status().message().find("elan"), std::string::npos);
}

TEST(ServerPool, GoalAtAndMultiAttempt) {
  ServerPool pool(Scripted("normal"));
  std::string text = "theorem t (a : ℕ) : a = a := by\n  -- goal: a : ℕ\\n⊢ a = a\n  sorry\n";
  auto g = pool.GoalAt(Request(text), {2, 2});
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->goals, std::vector<std::string>{"a : ℕ\n⊢ a = a"});
  auto m = pool.MultiAttempt(Request(text), 2, {"rfl", "exact foo -- ERROR: unknown identifier 'foo'"});
  ASSERT_TRUE(m.ok());
  ASSERT_EQ(m->size(), 2u);
  EXPECT_TRUE((*m)[0].diagnostics.empty());
  ASSERT_EQ((*m)[1].diagnostics.size(), 1u);
  EXPECT_EQ(pool.servers_started(), 1u);
}

}  // namespace
}  // namespace lr::lsp
