// `leanrotor tui` in a real terminal: tmux runs it in a 120x40 pane, send-keys types, capture-pane reads the screen.
// The model is a scripted OpenAI-compatible server (scripted_openai.py, reached through the real RemoteModel) and Lean
// a scripted language server (scripted_lean.py, reached through the real lsp client and pool via --lean-cmd).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>

namespace {

namespace fs = std::filesystem;

std::string Shell(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  pclose(p);
  return out;
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class TerminalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (Shell("command -v tmux").empty()) GTEST_SKIP() << "tmux is not installed (scripts/setup.sh installs it)";
    if (Shell("command -v python3").empty()) GTEST_SKIP() << "python3 is not installed";
    binary_ = std::string(LR_BINARY_DIR) + "/leanrotor";
    ASSERT_TRUE(fs::exists(binary_)) << binary_;
    dir_ = fs::temp_directory_path() / ("lr_tui_test_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    static int tests = 0;  // a tmux server per test: one that is still exiting does not take the next test's session
    socket_ = "lr-tui-" + std::to_string(getpid()) + "-" + std::to_string(++tests);
  }

  void TearDown() override {
    if (!socket_.empty()) Shell("tmux -L " + socket_ + " kill-server 2>/dev/null");
    if (server_pid_ > 0) Shell("kill " + std::to_string(server_pid_) + " 2>/dev/null");
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  // Starts the scripted model server with `script` (JSON), `pause` seconds between streamed pieces; returns its base
  // URL.
  std::string StartModelServer(const std::string& script, const std::string& pause = "0.02") {
    std::ofstream(dir_ / "script.json") << script;
    const std::string cmd = "python3 " + std::string(LR_SOURCE_DIR) + "/tests/tui/scripted_openai.py " +
                            (dir_ / "script.json").string() + " " + (dir_ / "port").string() + " " + pause +
                            " >/dev/null 2>&1 & echo $!";
    server_pid_ = std::atoi(Shell(cmd).c_str());
    for (int i = 0; i < 100 && !fs::exists(dir_ / "port"); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_TRUE(fs::exists(dir_ / "port")) << "the scripted model server did not start";
    return "http://127.0.0.1:" + ReadAll(dir_ / "port") + "/v1";
  }

  // Runs `leanrotor tui ARGS` in the pane, with `env` (VAR=value ...) in front. The command goes through script
  // files so that ARGS may hold quotes of their own. tui.pid gets the TUI's process id; once it ends, exit.txt gets
  // its exit status and stty.txt the terminal's settings, to show whether the TUI gave the terminal back.
  void StartTui(const std::string& args, const std::string& env = "") {
    std::ofstream(dir_ / "tui.sh") << "echo $$ > " << (dir_ / "tui.pid").string() << "\n"
                                   << "exec env LANG=C.UTF-8 LC_ALL=C.UTF-8 " << env << " " << binary_ << " tui "
                                   << args << " 2>" << (dir_ / "stderr.txt").string() << "\n";
    std::ofstream(dir_ / "run.sh") << "cd " << dir_.string() << " && sh " << (dir_ / "tui.sh").string() << "\n"
                                   << "echo $? > " << (dir_ / "exit.txt").string() << ".tmp && mv "
                                   << (dir_ / "exit.txt").string() << ".tmp " << (dir_ / "exit.txt").string() << "\n"
                                   << "stty -a > " << (dir_ / "stty.txt").string() << ".tmp && mv "
                                   << (dir_ / "stty.txt").string() << ".tmp " << (dir_ / "stty.txt").string() << "\n"
                                   << "sleep 0.5\n";
    const std::string cmd =
        "tmux -L " + socket_ + " -u -f /dev/null new-session -d -x 120 -y 40 'sh " + (dir_ / "run.sh").string() + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }

  // The terminal's settings after the TUI ended, as stty words ("icanon", "-echo", ...).
  std::set<std::string> TerminalSettingsAfterExit() {
    for (int i = 0; i < 100 && !fs::exists(dir_ / "stty.txt"); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::istringstream words(ReadAll(dir_ / "stty.txt"));
    std::set<std::string> out;
    for (std::string w; words >> w;) out.insert(w);
    return out;
  }

  // Waits (up to 30 s) for the TUI to end; returns its exit status (-1 when it did not end) and the seconds from
  // `since` to the moment its exit was seen (within 20 ms).
  int ExitStatus(std::chrono::steady_clock::time_point since, double* seconds) {
    for (int i = 0; i < 1500 && !fs::exists(dir_ / "exit.txt"); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
    if (!fs::exists(dir_ / "exit.txt")) return -1;
    return std::atoi(ReadAll(dir_ / "exit.txt").c_str());
  }

  std::string Screen() { return Shell("tmux -L " + socket_ + " capture-pane -p 2>/dev/null"); }

  void Keys(const std::string& keys) { Shell("tmux -L " + socket_ + " send-keys " + keys); }

  // Polls the screen until it contains `text` (up to 20 s); returns the last screen seen.
  std::string WaitFor(const std::string& text) {
    std::string screen;
    for (int i = 0; i < 200; ++i) {
      screen = Screen();
      if (screen.find(text) != std::string::npos) return screen;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "the screen never showed \"" << text << "\"; last screen:\n"
                  << screen << "\nstderr: " << ReadAll(dir_ / "stderr.txt");
    return screen;
  }

  bool SessionGone() {
    for (int i = 0; i < 100; ++i) {
      if (std::system(("tmux -L " + socket_ + " has-session 2>/dev/null").c_str()) != 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  std::string binary_;
  fs::path dir_;
  std::string socket_;
  int server_pid_ = 0;
};

constexpr char kBadReply[] = "```lean\\ntheorem add_zero' (n : Nat) : n + 0 = n := by\\n  bad_tactic\\n```";
constexpr char kGoodReply[] = "```lean\\ntheorem add_zero' (n : Nat) : n + 0 = n := by\\n  simp\\n```";

TEST_F(TerminalTest, ProveWatchAcceptSave) {
  fs::copy_file(fs::path(LR_SOURCE_DIR) / "examples/Basic.lean", dir_ / "Basic.lean");
  const std::string url =
      StartModelServer(std::string("{\"add_zero'\": [\"") + kBadReply + "\", \"" + kGoodReply + "\"]}");
  StartTui("Basic.lean --remote " + url + " --model-id scripted -k 2 --turns 1 --lean-cmd 'python3 " + LR_SOURCE_DIR +
           "/tests/tui/scripted_lean.py'");

  // The file opens at its first sorry; Lean's check of the buffer shows the goal there, with its Unicode.
  std::string screen = WaitFor("⊢ n + 0 = n");
  EXPECT_NE(screen.find("theorem 1/6: add_zero' (sorry)"), std::string::npos) << screen;
  EXPECT_NE(screen.find("declaration uses 'sorry'"), std::string::npos) << screen;
  EXPECT_NE(screen.find("Lean: ready"), std::string::npos) << screen;
  EXPECT_NE(screen.find("scripted"), std::string::npos) << screen;

  // Prove: candidate 1 fails Lean's check, candidate 2 is accepted and selected.
  Keys("Enter");
  screen = WaitFor("result: proved");
  EXPECT_NE(screen.find("1 failed"), std::string::npos) << screen;
  EXPECT_NE(screen.find("2 accepted"), std::string::npos) << screen;
  EXPECT_NE(screen.find("1 failed      turn 0     12 tok  Lean reports errors"), std::string::npos) << screen;
  EXPECT_NE(screen.find(">"), std::string::npos) << screen;

  // The diff against the current proof, then accept it into the file and save.
  Keys("d");
  screen = WaitFor("against the current proof");
  EXPECT_NE(screen.find("+   simp"), std::string::npos) << screen;
  EXPECT_NE(screen.find("-   sorry"), std::string::npos) << screen;
  EXPECT_LT(screen.find("-   sorry"), screen.find("+   simp")) << screen;  // the old line first
  Keys("a");
  screen = WaitFor("accepted attempt 2 into add_zero'");
  EXPECT_NE(screen.find("Basic.lean [+]"), std::string::npos) << screen;
  Keys("s");
  WaitFor("saved Basic.lean");
  const std::string saved = ReadAll(dir_ / "Basic.lean");
  EXPECT_NE(saved.find("theorem add_zero' (n : Nat) : n + 0 = n := by\n  simp\n"), std::string::npos) << saved;
  EXPECT_NE(saved.find("theorem zero_add' (n : Nat) : 0 + n = n := by\n  sorry"), std::string::npos) << saved;

  // The command line with history, the next sorry, the help, then quit.
  Keys("/k Space 3 Enter");
  WaitFor("k=3 turns=1");
  Keys("/ Up");
  WaitFor("/k 3");
  Keys("Escape");
  Keys("n");
  WaitFor("theorem 2/6: zero_add' (sorry)");
  Keys("?");
  WaitFor("Help (Esc closes)");
  Keys("Escape");
  Keys("q");
  EXPECT_TRUE(SessionGone()) << Screen();
}

TEST_F(TerminalTest, WithoutLeanTheSessionOpensAndSaysHowToInstallIt) {
  fs::copy_file(fs::path(LR_SOURCE_DIR) / "examples/Basic.lean", dir_ / "Basic.lean");
  const std::string url = StartModelServer("{}");
  // No --lean-cmd, and a PATH without lean or lake.
  StartTui("Basic.lean --remote " + url + " --model-id scripted", "PATH=/usr/bin:/bin");
  WaitFor("Lean: not found");
  WaitFor("elan");  // the install hint may be drawn a refresh after the status line
  Keys("Enter");
  WaitFor("cannot prove: Lean not found");
  // Ctrl-C quits (the buffer is unchanged) and the terminal is given back.
  Keys("C-c");
  EXPECT_TRUE(SessionGone()) << Screen();
}

TEST_F(TerminalTest, NarrowTerminalAndResize) {
  std::ofstream(dir_ / "New.lean") << "";
  const std::string url = StartModelServer("{}");
  StartTui("New.lean --remote " + url + " --model-id scripted --lean-cmd 'python3 " + std::string(LR_SOURCE_DIR) +
           "/tests/tui/scripted_lean.py'");
  WaitFor("Lean: ready");
  // Type a theorem with Unicode into the command line; it is added to the buffer and checked.
  Keys("'/theorem t (a b : ℕ) : a + b = b + a' Enter");
  std::string screen = WaitFor("⊢ a + b = b + a");
  EXPECT_NE(screen.find("theorem t (a b : ℕ) : a + b = b + a := by"), std::string::npos) << screen;
  Shell("tmux -L " + socket_ + " resize-window -x 80 -y 30");
  screen = WaitFor("theorem 1/1: t (sorry)");
  Keys("/quit! Enter");
  EXPECT_TRUE(SessionGone()) << Screen();
}

TEST_F(TerminalTest, CancelHelpAndTheTerminalGivenBackOnSigterm) {
  fs::copy_file(fs::path(LR_SOURCE_DIR) / "examples/Basic.lean", dir_ / "Basic.lean");
  // A slow model: the reply takes seconds to stream, so the proof is still running when Esc comes.
  const std::string url = StartModelServer(std::string("{\"add_zero'\": [\"") + kGoodReply + "\"]}", "0.3");
  StartTui("Basic.lean --remote " + url + " --model-id scripted -k 1 --lean-cmd 'python3 " + LR_SOURCE_DIR +
           "/tests/tui/scripted_lean.py'");
  WaitFor("Lean: ready");
  Keys("Enter");
  WaitFor("generating");
  Keys("Escape");
  std::string screen = WaitFor("result: cancelled");
  EXPECT_EQ(screen.find("accepted"), std::string::npos) << screen;
  Keys("/help Enter");
  WaitFor("Help (Esc closes)");
  Keys("Escape");

  // SIGTERM ends the session; the terminal is back in its normal mode (line editing and echo on).
  const int tui = std::atoi(ReadAll(dir_ / "tui.pid").c_str());
  ASSERT_GT(tui, 0);
  ASSERT_EQ(::kill(tui, SIGTERM), 0);
  const std::set<std::string> settings = TerminalSettingsAfterExit();
  ASSERT_FALSE(settings.empty()) << "no stty output after the TUI ended";
  EXPECT_EQ(settings.count("icanon"), 1u);
  EXPECT_EQ(settings.count("echo"), 1u);
  EXPECT_EQ(settings.count("-icanon"), 0u);
  EXPECT_EQ(settings.count("-echo"), 0u);
  EXPECT_TRUE(SessionGone()) << Screen();
}

TEST_F(TerminalTest, SigtermWithLeanAndTheModelBusyExitsAtOnce) {
  fs::copy_file(fs::path(LR_SOURCE_DIR) / "examples/Basic.lean", dir_ / "Basic.lean");
  // A slow model and a Lean server that never finishes a check: both are busy when SIGTERM comes.
  const std::string url = StartModelServer(std::string("{\"add_zero'\": [\"") + kGoodReply + "\"]}", "0.3");
  StartTui("Basic.lean --remote " + url + " --model-id scripted -k 1 --lean-cmd '" + LR_SCRIPTED_LEAN_SERVER +
           " --scenario hang'");
  WaitFor("Lean: checking");
  Keys("Enter");
  WaitFor("generating");
  const int tui = std::atoi(ReadAll(dir_ / "tui.pid").c_str());
  ASSERT_GT(tui, 0);
  ASSERT_EQ(::kill(tui, SIGTERM), 0);
  double seconds = 0;
  EXPECT_EQ(ExitStatus(std::chrono::steady_clock::now(), &seconds), 143) << ReadAll(dir_ / "stderr.txt");
  EXPECT_LT(seconds, 5.0);
  std::printf("tui: SIGTERM to exit with a Lean check and a model request in flight: %.2f s\n", seconds);
  EXPECT_EQ(TerminalSettingsAfterExit().count("icanon"), 1u);
}

TEST_F(TerminalTest, QuitWhileTheModelLoadsAndCalibrates) {
  const fs::path model = fs::path(LR_SOURCE_DIR) / "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(model)) GTEST_SKIP() << "no default model at " << model;
  fs::copy_file(fs::path(LR_SOURCE_DIR) / "examples/Basic.lean", dir_ / "Basic.lean");
  // An empty calibration cache: the q8_0 cache needs the model's KV calibration, a prefill of seconds.
  StartTui("Basic.lean -m " + model.string() + " --ctk q8_0 --ctv q8_0 --lean-cmd 'python3 " + LR_SOURCE_DIR +
               "/tests/tui/scripted_lean.py'",
           "LEANROTOR_CACHE_DIR=" + (dir_ / "cache").string());
  WaitFor("loading");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // well into the calibration prefill
  Keys("q");
  double seconds = 0;
  EXPECT_EQ(ExitStatus(std::chrono::steady_clock::now(), &seconds), 0) << ReadAll(dir_ / "stderr.txt");
  EXPECT_LT(seconds, 5.0);
  std::printf("tui: q to exit while the model calibrates: %.2f s\n", seconds);
}

TEST_F(TerminalTest, QuitGivesTheTerminalBack) {
  fs::copy_file(fs::path(LR_SOURCE_DIR) / "examples/Basic.lean", dir_ / "Basic.lean");
  const std::string url = StartModelServer("{}");
  StartTui("Basic.lean --remote " + url + " --model-id scripted --lean-cmd 'python3 " + std::string(LR_SOURCE_DIR) +
           "/tests/tui/scripted_lean.py'");
  WaitFor("Lean: ready");
  Keys("q");
  const std::set<std::string> settings = TerminalSettingsAfterExit();
  ASSERT_FALSE(settings.empty()) << "no stty output after the TUI ended";
  EXPECT_EQ(settings.count("icanon"), 1u);
  EXPECT_EQ(settings.count("-echo"), 0u);
  EXPECT_TRUE(SessionGone()) << Screen();
}

TEST_F(TerminalTest, FatalSignalGivesTheTerminalBack) {
  fs::copy_file(fs::path(LR_SOURCE_DIR) / "examples/Basic.lean", dir_ / "Basic.lean");
  const std::string url = StartModelServer("{}");
  StartTui("Basic.lean --remote " + url + " --model-id scripted --lean-cmd 'python3 " + std::string(LR_SOURCE_DIR) +
           "/tests/tui/scripted_lean.py'");
  WaitFor("Lean: ready");
  // A crash (here a SIGSEGV sent from outside) restores the terminal before the signal takes its course.
  const int tui = std::atoi(ReadAll(dir_ / "tui.pid").c_str());
  ASSERT_GT(tui, 0);
  ASSERT_EQ(::kill(tui, SIGSEGV), 0);
  const std::set<std::string> settings = TerminalSettingsAfterExit();
  ASSERT_FALSE(settings.empty()) << "no stty output after the TUI ended";
  EXPECT_EQ(settings.count("icanon"), 1u);
  EXPECT_EQ(settings.count("echo"), 1u);
  EXPECT_TRUE(SessionGone()) << Screen();
}

}  // namespace
