// `leanrotor prove` and `leanrotor batch` end to end: the real executable, a scripted OpenAI-compatible model
// (tests/tui/scripted_openai.py, canned replies, cheats included) behind --remote, and the scripted Lean server
// (tests/lsp/scripted_lean_server.cc) behind --lean-cmd. The batch is interrupted with SIGINT mid-run and then
// resumed: nothing lost, nothing duplicated.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "agent/batch.h"
#include "base/file.h"
#include "tests/agent/test_files.h"

namespace lr::agent {
namespace {

std::string TempDir(const std::string& name) { return testing::TempDir("lr_agent_cli_", name); }

// Starts `args` with stdout and stderr in `log`; returns its pid.
pid_t Start(const std::vector<std::string>& args, const std::string& log) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    std::_Exit(127);
  }
  return pid;
}

// The exit status of `pid`, or 128 + the signal that ended it.
int Wait(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string Log(const std::string& path) {
  Result<std::string> text = ReadFile(path);
  return text.ok() ? *text : "(no log)";
}

using testing::FileLines;

// The scripted model server on a free loopback port, for the life of the fixture.
class ScriptedModelServer {
 public:
  // `script_json`: {"theorem name": ["reply", ...]}; a request gets the next reply of the first name (in the text's
  // order) that its messages mention. `pause`: seconds between streamed pieces.
  ScriptedModelServer(const std::string& dir, const std::string& script_json, const std::string& pause) {
    const std::string script = dir + "/script.json";
    const std::string port_file = dir + "/port";
    EXPECT_TRUE(WriteFileAtomic(script, script_json).ok());
    pid_ =
        Start({"python3", LR_SOURCE_DIR "/tests/tui/scripted_openai.py", script, port_file, pause}, dir + "/model.log");
    for (int waited = 0; waited < 10000 && !std::filesystem::exists(port_file); waited += 10)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    Result<std::string> port = ReadFile(port_file);
    if (port.ok()) url_ = "http://127.0.0.1:" + *port + "/v1";
  }
  ~ScriptedModelServer() {
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }
  const std::string& url() const { return url_; }  // empty when it did not start

 private:
  pid_t pid_ = -1;
  std::string url_;
};

// `server_flags`: more flags of the scripted Lean server (--hang-on TEXT, --crash-on TEXT).
std::vector<std::string> ProverArgs(const std::string& url, int turns = 0, const std::string& server_flags = "") {
  return {"--remote",   url,
          "--model-id", "scripted",
          "--lean-cmd", std::string(LR_SCRIPTED_LEAN_SERVER) + " --scenario normal " + server_flags,
          "--turns",    std::to_string(turns)};
}

// A task line of the miniF2F shape for `statement` (a theorem without its proof).
std::string TaskLine(const std::string& name, const std::string& statement) {
  return nlohmann::json{{"name", name}, {"header", ""}, {"formal_statement", statement + " := by\n"}}.dump() + "\n";
}

// `leanrotor batch DIR/tasks.jsonl --out OUT -k K` with the scripted model at `url` and Lean (`server_flags`).
std::vector<std::string> BatchArgs(const std::string& dir, const std::string& out, int k, const std::string& url,
                                   const std::string& server_flags) {
  std::vector<std::string> args = {LR_LEANROTOR, "batch", dir + "/tasks.jsonl", "--out", out, "-k", std::to_string(k)};
  for (const std::string& a : ProverArgs(url, 0, server_flags)) args.push_back(a);
  return args;
}

// Polls until `path` holds `text` (up to 60 s).
bool WaitForText(const std::string& path, const std::string& text) {
  for (int waited = 0; waited < 60000; waited += 10) {
    if (Log(path).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// Sends `sig` to `pid`; returns its exit code, and the seconds from the signal to its exit in *seconds.
int SignalAndWait(pid_t pid, int sig, double* seconds) {
  EXPECT_EQ(::kill(pid, sig), 0);
  const auto start = std::chrono::steady_clock::now();
  const int code = Wait(pid);
  *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return code;
}

std::string LeanBlock(const std::string& statement, const std::string& proof) {
  return "```lean\n" + statement + " := by\n  " + proof + "\n```";
}

TEST(ProveCommand, RefusesCheatsAndFillsEverySorry) {
  const std::string dir = TempDir("prove");
  const std::string first = "theorem cli_first (n : Nat) : n + 0 = n";
  const std::string second = "theorem cli_second (n : Nat) : 0 + n = n";
  // The second theorem's prompt also shows the first (its context), so it comes first in the script. The scripted
  // Lean server reports an `UNSOLVED` token as "unsolved goals".
  nlohmann::ordered_json script;
  script["cli_second"] = {LeanBlock(second, "exact UNSOLVED"), LeanBlock(second, "simp")};
  script["cli_first"] = {LeanBlock(first, "sorry"), LeanBlock(first, "native_decide"),
                         LeanBlock("theorem cli_first (n : Nat) : True", "trivial"),  // another statement
                         LeanBlock(first, "simp")};
  ScriptedModelServer model(dir, script.dump(), "0");
  ASSERT_FALSE(model.url().empty()) << Log(dir + "/model.log");

  const std::string file = dir + "/Two.lean";
  ASSERT_TRUE(WriteFileAtomic(file, first + " := by\n  sorry\n\n" + second + " := by\n  sorry\n").ok());
  std::vector<std::string> args = {LR_LEANROTOR, "prove", file, "-k", "4"};
  for (const std::string& a : ProverArgs(model.url())) args.push_back(a);
  const std::string log = dir + "/prove.log";
  EXPECT_EQ(Wait(Start(args, log)), 0) << Log(log);

  Result<std::string> proved = ReadFile(file);
  ASSERT_TRUE(proved.ok());
  EXPECT_EQ(proved->find("sorry"), std::string::npos) << *proved;
  EXPECT_EQ(proved->find("native_decide"), std::string::npos) << *proved;
  EXPECT_EQ(proved->find("True"), std::string::npos) << *proved;
  EXPECT_EQ(proved->find("UNSOLVED"), std::string::npos) << *proved;
  EXPECT_NE(proved->find(first + " := by\n  simp"), std::string::npos) << *proved;
  EXPECT_NE(proved->find(second + " := by\n  simp"), std::string::npos) << *proved;
}

TEST(ProveCommand, RepairTurnAndAnUnprovedTheoremWithOut) {
  const std::string dir = TempDir("repair");
  const std::string first = "theorem cli_a (n : Nat) : n + 0 = n";
  const std::string second = "theorem cli_b (n : Nat) : 0 + n = n";
  nlohmann::ordered_json script;
  script["cli_b"] = nlohmann::json::array();  // no replies: empty ```lean blocks, never a proof
  script["cli_a"] = {LeanBlock(first, "exact UNSOLVED"), LeanBlock(first, "simp")};  // fixed in the repair turn
  ScriptedModelServer model(dir, script.dump(), "0");
  ASSERT_FALSE(model.url().empty()) << Log(dir + "/model.log");

  const std::string file = dir + "/Two.lean";
  const std::string original = first + " := by\n  sorry\n\n" + second + " := by\n  sorry\n";
  ASSERT_TRUE(WriteFileAtomic(file, original).ok());
  const std::string out = dir + "/Two.proved.lean";
  std::vector<std::string> args = {LR_LEANROTOR, "prove", file, "-k", "1", "--out", out};
  for (const std::string& a : ProverArgs(model.url(), /*turns=*/1)) args.push_back(a);
  const std::string log = dir + "/prove.log";
  EXPECT_EQ(Wait(Start(args, log)), 1) << Log(log);  // not every theorem was proved
  EXPECT_EQ(Log(file), original);                    // --out leaves the source alone
  Result<std::string> proved = ReadFile(out);
  ASSERT_TRUE(proved.ok()) << Log(log);
  EXPECT_EQ(*proved, first + " := by\n  simp\n\n" + second + " := by\n  sorry\n") << Log(log);
}

TEST(ProveCommand, LeanLimitFlagsReachTheServer) {
  const std::string dir = TempDir("limits");
  const std::string statement = "theorem cli_limits (n : Nat) : n + 0 = n";
  nlohmann::ordered_json script;
  script["cli_limits"] = {LeanBlock(statement, "simp")};
  ScriptedModelServer model(dir, script.dump(), "0");
  ASSERT_FALSE(model.url().empty()) << Log(dir + "/model.log");
  // The "server" writes its limits next to itself and exits: Lean could not check (exit 2), the limits are on file.
  const std::string server = dir + "/print_limits.sh";
  ASSERT_TRUE(WriteFileAtomic(server, "#!/bin/sh\necho \"as=$(ulimit -v) cpu=$(ulimit -t)\" > \"$0.out\"\n").ok());
  ASSERT_EQ(::chmod(server.c_str(), 0755), 0);
  const std::string file = dir + "/One.lean";
  ASSERT_TRUE(WriteFileAtomic(file, statement + " := by\n  sorry\n").ok());
  const std::vector<std::string> args = {LR_LEANROTOR, "prove",         file,         "-k",         "1",
                                         "--remote",   model.url(),     "--model-id", "scripted",   "--lean-cmd",
                                         server,       "--lean-memory", "2",          "--lean-cpu", "13"};
  const std::string log = dir + "/prove.log";
  EXPECT_EQ(Wait(Start(args, log)), 2) << Log(log);
  EXPECT_EQ(Log(server + ".out"), "as=" + std::to_string(2 * 1024 * 1024) + " cpu=13\n") << Log(log);
}

TEST(ProveCommand, AnInterruptDuringALeanCheckWritesWhatWasProvedAndExitsAtOnce) {
  for (int sig : {SIGINT, SIGTERM}) {
    const std::string dir = TempDir("interrupt_" + std::to_string(sig));
    const std::string first = "theorem cli_int_a (n : Nat) : n + 0 = n";
    const std::string second = "theorem cli_int_b (n : Nat) : 0 + n = n";
    nlohmann::ordered_json script;
    script["cli_int_b"] = {LeanBlock(second, "exact LEAN_HANGS_HERE")};  // Lean never finishes this check
    script["cli_int_a"] = {LeanBlock(first, "simp")};
    ScriptedModelServer model(dir, script.dump(), "0");
    ASSERT_FALSE(model.url().empty()) << Log(dir + "/model.log");
    const std::string file = dir + "/Two.lean";
    ASSERT_TRUE(WriteFileAtomic(file, first + " := by\n  sorry\n\n" + second + " := by\n  sorry\n").ok());
    std::vector<std::string> args = {LR_LEANROTOR, "prove", file, "-k", "1"};
    for (const std::string& a : ProverArgs(model.url(), 0, "--hang-on LEAN_HANGS_HERE")) args.push_back(a);
    const std::string log = dir + "/prove.log";
    const pid_t pid = Start(args, log);
    ASSERT_TRUE(WaitForText(log, "proving cli_int_b")) << Log(log);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the reply streams in; its check hangs in Lean
    double seconds = 0;
    EXPECT_EQ(SignalAndWait(pid, sig, &seconds), 128 + sig) << Log(log);
    EXPECT_LT(seconds, 5.0) << Log(log);
    std::printf("prove: signal %d to exit: %.3f s\n", sig, seconds);
    // The first theorem's proof is written; the second keeps its sorry.
    EXPECT_EQ(Log(file), first + " := by\n  simp\n\n" + second + " := by\n  sorry\n") << Log(log);
  }
}

TEST(BatchCommand, AnInterruptAbandonsTheTaskInFlightAndExitsAtOnce) {
  const std::string dir = TempDir("batch_interrupt");
  std::string tasks_text;
  nlohmann::ordered_json script;
  for (int i = 0; i < 3; ++i) {
    const std::string name = "cli_abandon_" + std::to_string(i) + "_x";
    const std::string statement = "theorem " + name + " (n : Nat) : n + 0 = n";
    tasks_text += TaskLine(name, statement);
    script[name] = {LeanBlock(statement, i == 1 ? "exact LEAN_HANGS_HERE" : "simp")};
  }
  ASSERT_TRUE(WriteFileAtomic(dir + "/tasks.jsonl", tasks_text).ok());
  ScriptedModelServer model(dir, script.dump(), "0");
  ASSERT_FALSE(model.url().empty()) << Log(dir + "/model.log");
  const std::string out = dir + "/results.jsonl";
  const std::vector<std::string> args = BatchArgs(dir, out, 1, model.url(), "--hang-on LEAN_HANGS_HERE");
  const std::string log = dir + "/batch.log";
  const pid_t pid = Start(args, log);
  for (int waited = 0; FileLines(out).size() < 1 && waited < 60000; waited += 10)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // task 1's check hangs in Lean
  double seconds = 0;
  EXPECT_EQ(SignalAndWait(pid, SIGINT, &seconds), 130) << Log(log);
  EXPECT_LT(seconds, 5.0) << Log(log);
  std::printf("batch: SIGINT to exit: %.3f s\n", seconds);
  const std::vector<std::string> lines = FileLines(out);
  ASSERT_EQ(lines.size(), 1u) << Log(log);  // task 0 only: task 1 was in flight, task 2 never started
  EXPECT_NE(lines[0].find("cli_abandon_0_x"), std::string::npos) << lines[0];
  EXPECT_NE(Log(log).find("--resume"), std::string::npos) << Log(log);
}

TEST(BatchCommand, ACandidateThatCrashesLeansWorkerIsRejectedAndCounted) {
  const std::string dir = TempDir("batch_crash");
  std::string tasks_text;
  nlohmann::ordered_json script;
  const std::vector<std::vector<std::string>> replies = {{"exact WORKER_CRASH", "simp"},  // one crash, one proof
                                                         {"exact WORKER_CRASH", "exact WORKER_CRASH"},
                                                         {"simp", "simp"}};
  for (size_t i = 0; i < replies.size(); ++i) {
    const std::string name = "cli_crash_" + std::to_string(i) + "_x";
    const std::string statement = "theorem " + name + " (n : Nat) : n + 0 = n";
    tasks_text += TaskLine(name, statement);
    script[name] = {LeanBlock(statement, replies[i][0]), LeanBlock(statement, replies[i][1])};
  }
  ASSERT_TRUE(WriteFileAtomic(dir + "/tasks.jsonl", tasks_text).ok());
  ScriptedModelServer model(dir, script.dump(), "0");
  ASSERT_FALSE(model.url().empty()) << Log(dir + "/model.log");
  const std::string out = dir + "/results.jsonl";
  const std::vector<std::string> args = BatchArgs(dir, out, 2, model.url(), "--crash-on WORKER_CRASH");
  const std::string log = dir + "/batch.log";
  EXPECT_EQ(Wait(Start(args, log)), 0) << Log(log);
  const std::vector<std::string> lines = FileLines(out);
  ASSERT_EQ(lines.size(), 3u) << Log(log);
  std::vector<int> crashes;
  std::vector<bool> proved;
  for (const std::string& l : lines) {
    Result<TaskResult> r = ResultFromJson(l, out);
    ASSERT_TRUE(r.ok()) << l;
    EXPECT_TRUE(r->error.empty()) << l;
    crashes.push_back(r->worker_crashes);
    proved.push_back(r->proved);
  }
  EXPECT_EQ(crashes, (std::vector<int>{1, 2, 0}));
  EXPECT_EQ(proved, (std::vector<bool>{true, false, true}));
  Result<std::string> report = ReadFile(dir + "/results.md");
  ASSERT_TRUE(report.ok());
  EXPECT_NE(report->find("3 candidate(s) crashed Lean's file worker"), std::string::npos) << *report;
  EXPECT_NE(Log(log).find("3 candidate(s) crashed Lean's file worker"), std::string::npos) << Log(log);
}

TEST(BatchCommand, InterruptThenResumeLosesAndDuplicatesNothing) {
  const std::string dir = TempDir("batch");
  const int kTasks = 8;
  std::string tasks_text;
  nlohmann::ordered_json script;
  for (int i = 0; i < kTasks; ++i) {
    const std::string name = "cli_task_" + std::to_string(i) + "_x";
    const std::string statement = "theorem " + name + " (n : Nat) : n + 0 = n";
    tasks_text += TaskLine(name, statement);
    // Spare replies: a task in flight when the run is interrupted has used one and runs again after --resume.
    script[name] = {LeanBlock(statement, "simp"), LeanBlock(statement, "simp"), LeanBlock(statement, "simp")};
  }
  ASSERT_TRUE(WriteFileAtomic(dir + "/tasks.jsonl", tasks_text).ok());
  ScriptedModelServer model(dir, script.dump(), "0.03");  // about a second per reply
  ASSERT_FALSE(model.url().empty()) << Log(dir + "/model.log");

  const std::string out = dir + "/results.jsonl";
  std::vector<std::string> args = {LR_LEANROTOR, "batch", dir + "/tasks.jsonl", "--out", out, "-k", "1", "--jobs", "2"};
  for (const std::string& a : ProverArgs(model.url())) args.push_back(a);
  const std::string log = dir + "/batch.log";
  pid_t pid = Start(args, log);
  for (int waited = 0; FileLines(out).size() < 2 && waited < 60000; waited += 10)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(::kill(pid, SIGINT), 0);
  EXPECT_EQ(Wait(pid), 130) << Log(log);
  const size_t after_interrupt = FileLines(out).size();
  EXPECT_GE(after_interrupt, 2u);
  EXPECT_LT(after_interrupt, static_cast<size_t>(kTasks)) << Log(log);
  EXPECT_NE(Log(log).find("--resume"), std::string::npos) << Log(log);

  args.push_back("--resume");
  EXPECT_EQ(Wait(Start(args, log)), 0) << Log(log);
  std::vector<std::string> lines = FileLines(out);
  ASSERT_EQ(lines.size(), static_cast<size_t>(kTasks)) << Log(log);
  std::set<std::string> names;
  for (const std::string& l : lines) {
    Result<TaskResult> r = ResultFromJson(l, out);
    ASSERT_TRUE(r.ok()) << l;
    EXPECT_TRUE(r->proved) << l;
    names.insert(r->name);
  }
  EXPECT_EQ(names.size(), static_cast<size_t>(kTasks));
  Result<std::string> report = ReadFile(dir + "/results.md");
  ASSERT_TRUE(report.ok());
  EXPECT_NE(report->find("Solved vs budget"), std::string::npos) << *report;
}

}  // namespace
}  // namespace lr::agent
