#include "kvquant/eval.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "base/file.h"

namespace lr::kvquant {
namespace {

std::string TempPath(const char* name) {
  return ::testing::TempDir() + "/kvquant_" + std::to_string(getpid()) + "_" + name;
}

TEST(Eval, RowsFileRoundTrip) {
  const EvalData d = GaussianData(64, 20, 3, 1);
  const std::string path = TempPath("rows.bin");
  ASSERT_TRUE(WriteRowsFile(path, d).ok());
  auto back = ReadRowsFile(path, 1);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->dim, 64);
  EXPECT_EQ(back->n_q, 3);
  EXPECT_EQ(back->n_rows, 20);
  EXPECT_EQ(back->q, d.q);
  EXPECT_EQ(back->k, d.k);
  EXPECT_EQ(back->v, d.v);
  EXPECT_EQ(back->name, "rows");
}

TEST(Eval, RowsFileWithoutQueriesGetsThem) {
  EvalData d = GaussianData(32, 10, 0, 2);
  d.q.clear();
  const std::string path = TempPath("noq.bin");
  ASSERT_TRUE(WriteRowsFile(path, d).ok());
  auto back = ReadRowsFile(path, 1);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->n_q, 16);
  EXPECT_EQ(back->q.size(), 16u * 32u);
}

TEST(Eval, BadRowsFilesAreCorrupt) {
  const std::string path = TempPath("bad.bin");
  ASSERT_TRUE(WriteFileAtomic(path, "LRKVROWX0000000000000000").ok());
  auto r = ReadRowsFile(path, 1);
  EXPECT_EQ(r.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(r.status().message().find(path), std::string::npos);

  const EvalData d = GaussianData(32, 4, 1, 2);
  ASSERT_TRUE(WriteRowsFile(path, d).ok());
  auto full = ReadFile(path);
  ASSERT_TRUE(full.ok());
  ASSERT_TRUE(WriteFileAtomic(path, full->substr(0, full->size() - 4)).ok());  // truncated
  r = ReadRowsFile(path, 1);
  EXPECT_EQ(r.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(r.status().message().find("bytes"), std::string::npos);

  EXPECT_EQ(ReadRowsFile(TempPath("missing.bin"), 1).status().code(), StatusCode::kNotFound);
}

TEST(Eval, MetricsOnExactAndCoarseFormats) {
  const EvalData d = GaussianData(128, 256, 8, 3);
  auto f16 = EvaluateFormat("f16", d, 1);
  ASSERT_TRUE(f16.ok());
  EXPECT_EQ(f16->bits_per_element, 16.0);
  EXPECT_LT(f16->mse, 1e-6);
  EXPECT_GT(f16->cosine, 0.99999);
  EXPECT_LT(f16->ip_error, 1e-3);
  EXPECT_LT(f16->attn_rel_error, 1e-3);
  auto tq2 = EvaluateFormat("tq2", d, 1);
  ASSERT_TRUE(tq2.ok());
  EXPECT_NEAR(tq2->mse, 0.1175, 0.015);  // the 2-bit Lloyd-Max MSE
  EXPECT_LT(tq2->cosine, f16->cosine);
  EXPECT_GT(tq2->attn_rel_error, f16->attn_rel_error);
  EXPECT_EQ(EvaluateFormat("nope", d, 1).status().code(), StatusCode::kInvalidArgument);
}

// The goal of our format, checked on the fixed synthetic sets: at <= 3.5 bits, lower attention-output error than
// tq3, planar3 and iso3, on Gaussian and on heavy-tailed rows with outlier channels.
TEST(Eval, Hx3BeatsTheThreeBitBaselines) {
  for (const EvalData& d : {GaussianData(128, 1024, 16, 4), OutlierData(128, 1024, 16, 4)}) {
    auto ours = EvaluateFormat("hx3", d, 1);
    ASSERT_TRUE(ours.ok());
    EXPECT_LE(ours->bits_per_element, 3.5);
    for (const char* other : {"tq3", "planar3", "iso3"}) {
      auto r = EvaluateFormat(other, d, 1);
      ASSERT_TRUE(r.ok());
      EXPECT_LT(ours->attn_rel_error, r->attn_rel_error) << d.name << " vs " << other;
      EXPECT_LT(ours->mse, r->mse) << d.name << " vs " << other;
    }
  }
}

}  // namespace
}  // namespace lr::kvquant
