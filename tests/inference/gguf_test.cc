#include "inference/gguf.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "tests/inference/gguf_writer.h"

namespace lr::inference {
namespace {

using test_util::GgufWriter;

// A small valid file: scalars of several types, a string array, an f32 array, an i32 array, two tensors.
std::vector<uint8_t> SmallFile() {
  GgufWriter w;
  w.Header(2, 7);
  w.Key("general.architecture", GgufType::kString).Str("llama");
  w.Key("llama.block_count", GgufType::kU32).U32(30);
  w.Key("small.u8", GgufType::kU8).U8(7);
  w.Key("llama.rope.freq_base", GgufType::kF32).F32(10000.0f);
  w.Key("tokenizer.ggml.tokens", GgufType::kArray).U32(static_cast<uint32_t>(GgufType::kString)).U64(3);
  w.Str("a").Str("bc").Str("");
  w.Key("tokenizer.ggml.scores", GgufType::kArray).U32(static_cast<uint32_t>(GgufType::kF32)).U64(2);
  w.F32(-1.5f).F32(2.0f);
  w.Key("tokenizer.ggml.token_type", GgufType::kArray).U32(static_cast<uint32_t>(GgufType::kI32)).U64(2);
  w.I32(1).I32(-3);
  w.TensorInfo("a.weight", {4, 2}, ops::TensorType::kF32, 0);     // 32 bytes
  w.TensorInfo("b.weight", {32, 1}, ops::TensorType::kQ8_0, 32);  // 34 bytes
  w.PadTo(32);
  for (int i = 0; i < 8; ++i) w.F32(static_cast<float>(i));
  for (int i = 0; i < 34; ++i) w.U8(static_cast<uint8_t>(i));
  return w.bytes;
}

Result<GgufFile> Parse(std::vector<uint8_t> b) { return GgufFile::FromBytes(std::move(b), "test.gguf"); }

TEST(GgufTest, ReadsSmallFile) {
  auto f = Parse(SmallFile());
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(*f->GetString("general.architecture"), "llama");
  EXPECT_EQ(*f->GetU32("llama.block_count"), 30u);
  EXPECT_EQ(*f->GetU64("llama.block_count"), 30u);
  EXPECT_EQ(*f->GetU32("small.u8"), 7u);
  EXPECT_EQ(*f->GetF32("llama.rope.freq_base"), 10000.0f);
  EXPECT_EQ(*f->GetStringArray("tokenizer.ggml.tokens"), (std::vector<std::string>{"a", "bc", ""}));
  EXPECT_EQ(*f->GetF32Array("tokenizer.ggml.scores"), (std::vector<float>{-1.5f, 2.0f}));
  EXPECT_EQ(*f->GetI32Array("tokenizer.ggml.token_type"), (std::vector<int32_t>{1, -3}));
  EXPECT_EQ(f->Keys().size(), 7u);
  EXPECT_EQ(f->Keys()[0], "general.architecture");

  ASSERT_EQ(f->tensors().size(), 2u);
  auto a = f->FindTensor("a.weight");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*a)->shape, (std::vector<int64_t>{4, 2}));
  EXPECT_EQ((*a)->type.type, ops::TensorType::kF32);
  EXPECT_EQ((*a)->bytes, 32u);
  float x;
  std::memcpy(&x, (*a)->data + 4 * 5, 4);
  EXPECT_EQ(x, 5.0f);
  auto b = f->FindTensor("b.weight");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->bytes, 34u);
  EXPECT_EQ((*b)->data[33], 33);
}

TEST(GgufTest, GetterErrorsNameTheKey) {
  auto f = Parse(SmallFile());
  ASSERT_TRUE(f.ok());
  auto missing = f->GetU32("llama.context_length");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("llama.context_length"), std::string::npos);
  auto wrong = f->GetU32("general.architecture");
  EXPECT_EQ(wrong.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(wrong.status().message().find("general.architecture"), std::string::npos);
  EXPECT_NE(wrong.status().message().find("string"), std::string::npos);
  EXPECT_EQ(f->GetStringArray("tokenizer.ggml.scores").status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(f->GetF32("llama.block_count").status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(f->GetBool("small.u8").status().code(), StatusCode::kCorrupt);
  EXPECT_FALSE(f->Has("nope"));
  auto t = f->FindTensor("output.weight");
  EXPECT_EQ(t.status().code(), StatusCode::kNotFound);
  EXPECT_NE(t.status().message().find("output.weight"), std::string::npos);
}

TEST(GgufTest, IntegerRangeIsChecked) {
  GgufWriter w;
  w.Header(0, 2);
  w.Key("neg", GgufType::kI32).I32(-1);
  w.Key("big", GgufType::kU64).U64(uint64_t{1} << 40);
  auto f = Parse(w.bytes);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->GetU32("neg").status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(f->GetU32("big").status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(*f->GetU64("big"), uint64_t{1} << 40);
}

TEST(GgufTest, AcceptsVersion2AndCustomAlignment) {
  GgufWriter w;
  w.Header(1, 1, 2);
  w.Key("general.alignment", GgufType::kU32).U32(64);
  w.TensorInfo("t", {8}, ops::TensorType::kF16, 0);
  w.PadTo(64);
  for (int i = 0; i < 16; ++i) w.U8(1);
  auto f = Parse(w.bytes);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->tensors()[0].bytes, 16u);
  EXPECT_EQ(f->tensors()[0].data, f->tensors()[0].data);
}

// Expects parsing `bytes` to fail with `code` and a message containing `needle`.
void ExpectError(std::vector<uint8_t> bytes, StatusCode code, std::string_view needle) {
  auto f = Parse(std::move(bytes));
  ASSERT_FALSE(f.ok()) << "expected an error mentioning " << needle;
  EXPECT_EQ(f.status().code(), code) << f.status().ToString();
  EXPECT_NE(f.status().message().find(needle), std::string::npos) << f.status().ToString();
}

TEST(GgufTest, RejectsBadHeaders) {
  ExpectError({}, StatusCode::kCorrupt, "magic");
  ExpectError({'G', 'G', 'M', 'L', 3, 0, 0, 0}, StatusCode::kCorrupt, "not a GGUF");
  GgufWriter v1;
  v1.Header(0, 0, 1);
  ExpectError(v1.bytes, StatusCode::kUnsupported, "version 1");
  GgufWriter huge;
  huge.Header(0, uint64_t{1} << 60);
  ExpectError(huge.bytes, StatusCode::kCorrupt, "kv_count");
  GgufWriter many;
  many.Header(uint64_t{1} << 60, 0);
  ExpectError(many.bytes, StatusCode::kCorrupt, "tensor_count");
}

TEST(GgufTest, RejectsBadMetadata) {
  GgufWriter dup;
  dup.Header(0, 2);
  dup.Key("k", GgufType::kU8).U8(1);
  dup.Key("k", GgufType::kU8).U8(2);
  ExpectError(dup.bytes, StatusCode::kCorrupt, "duplicate key 'k'");

  GgufWriter bad_type;
  bad_type.Header(0, 1);
  bad_type.Key("k", static_cast<GgufType>(13)).U8(1);
  ExpectError(bad_type.bytes, StatusCode::kCorrupt, "unknown value type 13");

  GgufWriter long_string;
  long_string.Header(0, 1);
  long_string.Key("name", GgufType::kString).U64(~uint64_t{0});
  ExpectError(long_string.bytes, StatusCode::kCorrupt, "key 'name'");

  GgufWriter long_array;
  long_array.Header(0, 1);
  long_array.Key("arr", GgufType::kArray).U32(static_cast<uint32_t>(GgufType::kF32)).U64(uint64_t{1} << 62);
  ExpectError(long_array.bytes, StatusCode::kCorrupt, "key 'arr'");

  GgufWriter nested;
  nested.Header(0, 1);
  nested.Key("arr", GgufType::kArray).U32(static_cast<uint32_t>(GgufType::kArray)).U64(0);
  ExpectError(nested.bytes, StatusCode::kUnsupported, "array of arrays");

  GgufWriter align;
  align.Header(0, 1);
  align.Key("general.alignment", GgufType::kU32).U32(24);
  ExpectError(align.bytes, StatusCode::kCorrupt, "power of two");
}

// One tensor "t" with the given dims/type/offset, followed by `data_bytes` bytes of data.
std::vector<uint8_t> OneTensor(std::vector<uint64_t> dims, uint32_t type, uint64_t offset, size_t data_bytes) {
  GgufWriter w;
  w.Header(1, 0);
  w.Str("t").U32(static_cast<uint32_t>(dims.size()));
  for (uint64_t d : dims) w.U64(d);
  w.U32(type).U64(offset);
  w.PadTo(32);
  for (size_t i = 0; i < data_bytes; ++i) w.U8(0);
  return w.bytes;
}

TEST(GgufTest, RejectsBadTensors) {
  ASSERT_TRUE(Parse(OneTensor({4}, 0, 0, 16)).ok());
  ExpectError(OneTensor({4}, 0, 0, 15), StatusCode::kCorrupt, "tensor 't'");
  ExpectError(OneTensor({}, 0, 0, 16), StatusCode::kCorrupt, "0 dimensions");
  ExpectError(OneTensor({1, 1, 1, 1, 1}, 0, 0, 16), StatusCode::kCorrupt, "5 dimensions");
  ExpectError(OneTensor({4, 0}, 0, 0, 16), StatusCode::kCorrupt, "dim 1");
  ExpectError(OneTensor({uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0, 16), StatusCode::kCorrupt, "dim 1");
  ExpectError(OneTensor({4}, 99, 0, 16), StatusCode::kUnsupported, "ggml type 99");
  ExpectError(OneTensor({16}, static_cast<uint32_t>(ops::TensorType::kQ4_0), 0, 64), StatusCode::kCorrupt,
              "not a multiple");
  ExpectError(OneTensor({4}, 0, 8, 64), StatusCode::kCorrupt, "alignment");
  ExpectError(OneTensor({4}, 0, uint64_t{1} << 62, 16), StatusCode::kCorrupt, "past the end");

  GgufWriter dup;
  dup.Header(2, 0);
  dup.TensorInfo("t", {4}, ops::TensorType::kF32, 0).TensorInfo("t", {4}, ops::TensorType::kF32, 32);
  dup.PadTo(32);
  for (int i = 0; i < 64; ++i) dup.U8(0);
  ExpectError(dup.bytes, StatusCode::kCorrupt, "duplicate tensor 't'");

  GgufWriter overlap;
  overlap.Header(2, 0);
  overlap.TensorInfo("a", {16}, ops::TensorType::kF32, 0).TensorInfo("b", {4}, ops::TensorType::kF32, 32);
  overlap.PadTo(32);
  for (int i = 0; i < 64; ++i) overlap.U8(0);
  ExpectError(overlap.bytes, StatusCode::kCorrupt, "overlap");
}

// Every proper prefix of a valid file is an error (kCorrupt), never a crash.
TEST(GgufTest, EveryTruncationIsAnError) {
  std::vector<uint8_t> full = SmallFile();
  ASSERT_TRUE(Parse(full).ok());
  for (size_t n = 0; n < full.size(); ++n) {
    auto f = Parse(std::vector<uint8_t>(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n)));
    ASSERT_FALSE(f.ok()) << "prefix of " << n << " bytes parsed";
    EXPECT_EQ(f.status().code(), StatusCode::kCorrupt) << n << ": " << f.status().ToString();
  }
}

// Deterministic mutation test (the libFuzzer target gguf_fuzz.cc does the same without a fixed seed): random byte
// flips of a valid file either parse, with every getter and tensor readable, or fail with a message.
TEST(GgufTest, RandomByteFlipsNeverCrash) {
  const std::vector<uint8_t> full = SmallFile();
  std::mt19937 rng(1234);
  int failures = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::vector<uint8_t> b = full;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) b[rng() % b.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
    auto f = Parse(std::move(b));
    if (!f.ok()) {
      ++failures;
      EXPECT_FALSE(f.status().message().empty());
      continue;
    }
    for (const std::string& k : f->Keys()) {
      (void)f->GetU32(k);
      (void)f->GetF32(k);
      (void)f->GetBool(k);
      (void)f->GetString(k);
      (void)f->GetStringArray(k);
      (void)f->GetF32Array(k);
      (void)f->GetI32Array(k);
    }
    uint64_t sum = 0;
    for (const auto& t : f->tensors())
      for (size_t i = 0; i < t.bytes; ++i) sum += t.data[i];
    (void)sum;
  }
  EXPECT_GT(failures, 0);
}

TEST(GgufTest, OpenReportsMissingFile) {
  auto f = GgufFile::Open("/nonexistent/model.gguf");
  EXPECT_EQ(f.status().code(), StatusCode::kNotFound);
  EXPECT_NE(f.status().message().find("/nonexistent/model.gguf"), std::string::npos);
}

TEST(GgufTest, OpenMapsAFileAndSurvivesMoves) {
  std::string path = (std::filesystem::temp_directory_path() / "lr_gguf_test_small.gguf").string();
  std::vector<uint8_t> bytes = SmallFile();
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  auto f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  GgufFile moved = std::move(f).value();
  EXPECT_EQ(moved.path(), path);
  EXPECT_EQ(*moved.GetString("general.architecture"), "llama");
  EXPECT_EQ(moved.tensors()[1].data[5], 5);
  std::filesystem::remove(path);
}

const char* kModelPath = LR_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

TEST(GgufModelTest, OpensDefaultModel) {
  if (!std::filesystem::exists(kModelPath)) GTEST_SKIP() << "no default model at " << kModelPath;
  auto f = GgufFile::Open(kModelPath);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(*f->GetString("general.architecture"), "llama");
  EXPECT_EQ(*f->GetU32("llama.block_count"), 30u);
  EXPECT_EQ(*f->GetU32("llama.embedding_length"), 576u);
  auto tokens = f->GetStringArray("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.status().ToString();
  EXPECT_EQ(tokens->size(), 49152u);
  auto emb = f->FindTensor("token_embd.weight");
  ASSERT_TRUE(emb.ok()) << emb.status().ToString();
  EXPECT_EQ((*emb)->shape, (std::vector<int64_t>{576, 49152}));
  EXPECT_TRUE(f->FindTensor("blk.29.ffn_down.weight").ok());
  EXPECT_FALSE(f->FindTensor("blk.30.ffn_down.weight").ok());
}

}  // namespace
}  // namespace lr::inference
