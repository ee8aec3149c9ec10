// One vocabulary: every subcommand's --help works, and every flag README.md's command lines use is one that
// subcommand lists (so a renamed or missing flag fails here, not in a user's shell).
#include <sys/wait.h>

#include <cstdio>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "base/file.h"

namespace lr {
namespace {

struct CliRun {
  int exit_code = -1;
  std::string out;
};

CliRun Leanrotor(const std::string& args) {
  CliRun r;
  FILE* p = ::popen((std::string(LR_LEANROTOR) + " " + args + " 2>&1").c_str(), "r");
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The option names a --help text lists ("-m,--model TEXT ..." gives -m and --model).
std::set<std::string> ListedFlags(const std::string& help) {
  std::set<std::string> flags;
  std::istringstream lines(help);
  const std::regex name(R"((^|[ ,])(--?[A-Za-z][\w-]*))");
  for (std::string line; std::getline(lines, line);) {
    const size_t first = line.find_first_not_of(' ');
    if (first == std::string::npos || line[first] != '-') continue;  // option lines start with their names
    const std::string names = line.substr(first, line.find("  ", first) - first);
    for (std::sregex_iterator it(names.begin(), names.end(), name), end; it != end; ++it) flags.insert((*it)[2]);
  }
  return flags;
}

std::vector<std::string> Subcommands() {
  const CliRun top = Leanrotor("--help");
  std::vector<std::string> subs;
  std::istringstream lines(top.out.substr(top.out.find("SUBCOMMANDS:") + 12));
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::string word;
    if (words >> word && word.find_first_not_of("abcdefghijklmnopqrstuvwxyz-") == std::string::npos)
      subs.push_back(word);
  }
  return subs;
}

TEST(Help, EverySubcommandsHelpParses) {
  const CliRun top = Leanrotor("--help");
  ASSERT_EQ(top.exit_code, 0) << top.out;
  const std::vector<std::string> subs = Subcommands();
  ASSERT_GE(subs.size(), 10u) << top.out;
  for (const std::string& sub : subs) {
    const CliRun r = Leanrotor(sub + " --help");
    EXPECT_EQ(r.exit_code, 0) << sub << ":\n" << r.out;
    EXPECT_NE(r.out.find("--help"), std::string::npos) << sub << ":\n" << r.out;
    EXPECT_FALSE(ListedFlags(r.out).empty()) << sub;
  }
}

TEST(Help, LeanAndSamplingFlagsAreSpelledAlikeEverywhere) {
  for (const std::string sub : {"check", "tui", "prove", "batch"}) {
    const std::set<std::string> flags = ListedFlags(Leanrotor(sub + " --help").out);
    for (const char* f : {"--lean-cmd", "--lean-memory", "--lean-cpu"})
      EXPECT_EQ(flags.count(f), 1u) << sub << " " << f;
    EXPECT_EQ(flags.count("--lean-command"), 0u) << sub;  // the other spelling is accepted, not listed
  }
  for (const std::string sub : {"tui", "prove", "batch"}) {
    const std::set<std::string> flags = ListedFlags(Leanrotor(sub + " --help").out);
    for (const char* f : {"--temp", "--remote", "--model-id", "-m", "--max-tokens", "--seed"})
      EXPECT_EQ(flags.count(f), 1u) << sub << " " << f;
  }
  // check's --lean-memory default is what the code does: no limit.
  const std::string check = Leanrotor("check --help").out;
  EXPECT_EQ(check.find("default 8"), std::string::npos) << check;
  // The other spellings still work.
  const CliRun alias = Leanrotor("check /nonexistent/x.lean --lean-command /bin/true --timeout 1");
  EXPECT_EQ(alias.exit_code, 2) << alias.out;
  EXPECT_NE(alias.out.find("/nonexistent/x.lean"), std::string::npos) << alias.out;
}

TEST(Help, EveryFlagInTheReadmesCommandLinesExists) {
  Result<std::string> readme = ReadFile(std::string(LR_SOURCE_DIR) + "/README.md");
  ASSERT_TRUE(readme.ok()) << readme.status().ToString();
  std::map<std::string, std::set<std::string>> listed;
  std::istringstream lines(*readme);
  bool in_code = false;
  int checked = 0;
  const std::regex command(R"(leanrotor\s+([a-z][a-z-]*)(.*))");
  const std::regex flag(R"((^|[\s\[])(--?[A-Za-z][\w-]*))");
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("```", 0) == 0) {
      in_code = !in_code;
      continue;
    }
    std::smatch m;
    if (!in_code || !std::regex_search(line, m, command)) continue;
    const std::string sub = m[1];
    std::string args = m[2];
    args = args.substr(0, args.find(" #"));                         // a comment
    args = std::regex_replace(args, std::regex(R"("[^"]*")"), "");  // quoted text
    if (!listed.count(sub)) {
      const CliRun help = Leanrotor(sub + " --help");
      ASSERT_EQ(help.exit_code, 0) << "README.md names `leanrotor " << sub << "`:\n" << line << "\n" << help.out;
      listed[sub] = ListedFlags(help.out);
    }
    for (std::sregex_iterator it(args.begin(), args.end(), flag), end; it != end; ++it) {
      const std::string f = (*it)[2];
      EXPECT_EQ(listed[sub].count(f), 1u) << "README.md: `leanrotor " << sub << "` has no flag " << f << ":\n" << line;
      ++checked;
    }
  }
  EXPECT_GT(checked, 30);
}

}  // namespace
}  // namespace lr
