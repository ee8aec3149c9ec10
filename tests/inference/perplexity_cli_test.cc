// `leanrotor perplexity --json` end to end on the default model (skipped when it is absent): the f16 run is the
// reference of its own ratio, and a compressed run's ratio, its standard error and its mean KL agree with its
// perplexity and with each other.
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace {

const std::string kModel = LR_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

// stdout of `leanrotor ARGS` (stderr dropped); fails the test on a non-zero exit.
std::string Leanrotor(const std::string& args) {
  const std::string cmd = std::string(LR_LEANROTOR) + " " + args + " 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = ::pclose(p);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << cmd << "\n" << out;
  return out;
}

TEST(PerplexityCli, RatiosAndStandardErrorsAgreeWithThePerplexities) {
  if (!std::filesystem::exists(kModel)) GTEST_SKIP() << kModel << " is missing (scripts/setup.sh)";
  const std::string out = Leanrotor("perplexity --json -t 2 -m " + kModel +
                                    " -f /usr/share/common-licenses/GPL-3 -c 128 --chunks 3 --ctk f16 --ctv f16 "
                                    "--ctk tq3 --ctv tq3");
  std::vector<nlohmann::json> runs;
  size_t start = 0;
  for (size_t end; (end = out.find('\n', start)) != std::string::npos; start = end + 1)
    runs.push_back(nlohmann::json::parse(out.substr(start, end - start)));
  ASSERT_EQ(runs.size(), 2u) << out;
  const nlohmann::json& ref = runs[0];
  const nlohmann::json& tq3 = runs[1];
  EXPECT_EQ(ref["tokens"], 3 * 63);
  EXPECT_EQ(ref["ln_ppl_ratio"], 0.0);
  EXPECT_EQ(ref["ln_ppl_ratio_se"], 0.0);
  EXPECT_EQ(ref["kld"], 0.0);
  EXPECT_EQ(tq3["ctk"], "tq3");
  const double ratio = tq3["ppl"].get<double>() / ref["ppl"].get<double>();
  EXPECT_NEAR(tq3["ln_ppl_ratio"].get<double>(), std::log(ratio), 1e-9);
  // A 3.5-bit cache changes the distributions: a positive KL, and per-token differences that spread.
  EXPECT_GT(tq3["kld"].get<double>(), 1e-3);
  EXPECT_GT(tq3["kld_se"].get<double>(), 0.0);
  EXPECT_LT(tq3["kld_se"].get<double>(), tq3["kld"].get<double>());
  EXPECT_GT(tq3["ln_ppl_ratio_se"].get<double>(), 0.0);
  EXPECT_LT(tq3["ln_ppl_ratio_se"].get<double>(), 0.5);
}

}  // namespace
