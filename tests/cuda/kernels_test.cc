// The CUDA kernels against plain scalar references on the CPU, on random inputs of odd sizes: weight decoding and
// products for every GGUF type (inference's DequantizeRow is the reference), RMSNorm, SwiGLU, the q/k step (per-head
// norm, RoPE in both styles with a YaRN-like angle table, the f16 page store), paged attention over several
// sequences, sampling, and the dummy weights; the int8 activations (QuantizeQ8 and the norms and SwiGLU that quantize
// their output) bit for bit against the CPU's QuantizeRowQ8, and the integer products against a product of the same
// quantized values. Every output buffer is poisoned (0xFF bytes: NaN) before the kernel
// runs, so an unwritten element fails. Skipped when no CUDA device is present.
#include "cuda/kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "base/half.h"
#include "cuda/device.h"
#include "cuda/matmul.h"
#include "ops/kernels.h"
#include "ops/tensor_type.h"
#include "tests/cuda/device_test_util.h"
#include "tests/ops/random_rows.h"

namespace lr::cuda {
namespace {

using testing::CpuQ8;
using testing::Dequantized;
using testing::FromDevice;
using testing::OnDevice;
using testing::Poisoned;
using testing::QuantizeCpu;
using testing::TestMatrix;
using testing::ToDevice;
using testing::Upload;
using CudaKernels = OnDevice<::testing::Test>;

// ||got - want|| / ||want||, infinite when some value is not finite.
double RelError(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

std::vector<float> RandomFloats(size_t n, std::mt19937& rng, float sd = 1.0f) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

ops::TensorTypeInfo Info(WeightType t) { return *ops::LookupTensorType(static_cast<uint32_t>(t)); }

std::vector<uint8_t> RandomGgufRows(WeightType t, int64_t rows, int64_t cols, std::mt19937& rng) {
  return ops::testing::RandomRows(Info(t), rows, cols, rng);
}

std::vector<float> DequantizeCpu(WeightType t, const std::vector<uint8_t>& gguf, int64_t rows, int64_t cols) {
  std::vector<float> w(rows * cols);
  const size_t rb = GgufRowBytes(t, cols);
  for (int64_t r = 0; r < rows; ++r) ops::DequantizeRow(Info(t), gguf.data() + r * rb, &w[r * cols], cols);
  return w;
}

struct DeviceQ8 {
  DeviceBuffer q, ds;
  Q8Activations view() const { return Q8Activations{q.as<int8_t>(), ds.as<float>()}; }
};
DeviceQ8 ToDevice(const CpuQ8& a) { return DeviceQ8{ToDevice(a.q), ToDevice(a.ds)}; }
// Room for count quantized values, poisoned.
DeviceQ8 PoisonedQ8(size_t count) {
  DeviceQ8 r{Poisoned(count / 4), Poisoned(count / 16)};
  return r;
}
// The device's quantized values equal the CPU's quantization of `of`, bit for bit.
void ExpectQ8Equals(const DeviceQ8& got, const std::vector<float>& of) {
  const CpuQ8 want = QuantizeCpu(of);
  const std::vector<int8_t> q = FromDevice<int8_t>(got.q, want.q.size());
  const std::vector<float> ds = FromDevice<float>(got.ds, want.ds.size());
  for (size_t i = 0; i < want.q.size(); ++i) ASSERT_EQ(q[i], want.q[i]) << "value " << i;
  for (size_t b = 0; b < want.ds.size(); ++b)
    ASSERT_EQ(ds[b], want.ds[b]) << (b % 2 ? "s" : "d") << " of block " << b / 2;
}

const WeightType kTypes[] = {WeightType::kF32,  WeightType::kF16,  WeightType::kBF16,
                             WeightType::kQ4_0, WeightType::kQ4_1, WeightType::kQ8_0,
                             WeightType::kQ4_K, WeightType::kQ5_K, WeightType::kQ6_K};

int64_t OddCols(WeightType t) {
  const bool k = t == WeightType::kQ4_K || t == WeightType::kQ5_K || t == WeightType::kQ6_K;
  return k ? 768 : 96;  // 3 blocks of the type (3 x 256, or 3 x 32)
}

class TypeTest : public OnDevice<::testing::TestWithParam<WeightType>> {};

TEST_P(TypeTest, DequantizeRowsEqualsCpu) {
  const WeightType t = GetParam();
  std::mt19937 rng(1);
  const int64_t rows = 7, cols = OddCols(t);
  const std::vector<uint8_t> gguf = RandomGgufRows(t, rows, cols, rng);
  TestMatrix m = Upload(t, gguf, rows, cols);
  const std::vector<int32_t> pick = {3, 0, 6, 3};
  DeviceBuffer idx = ToDevice(pick);
  DeviceBuffer out = Poisoned(pick.size() * cols);
  ASSERT_TRUE(DequantizeRows(m.m, idx.as<int32_t>(), 4, out.as<float>(), nullptr).ok());
  const std::vector<float> got = FromDevice<float>(out, pick.size() * cols);
  const std::vector<float> want = DequantizeCpu(t, gguf, rows, cols);
  for (size_t i = 0; i < pick.size(); ++i)
    for (int64_t c = 0; c < cols; ++c)
      ASSERT_NEAR(got[i * cols + c], want[pick[i] * cols + c], 1e-6f * std::fabs(want[pick[i] * cols + c]) + 1e-30f)
          << "row " << pick[i] << " col " << c;
}

// The products' paths: f32 activations (MatVec), int8 ones (MatVec with Q8Activations), the tensor-core product.
enum class Path { kMatVec, kMatVecQ8, kTiled };

// A band of rows as f16: the CPU-decoded values within f16's rounding (2^-11 relative; subnormals 2^-25).
TEST_P(TypeTest, DequantizeHalvesEqualsCpu) {
  const WeightType t = GetParam();
  std::mt19937 rng(3);
  const int64_t rows = 9, cols = OddCols(t), row0 = 2, count = 5;
  const std::vector<uint8_t> gguf = RandomGgufRows(t, rows, cols, rng);
  TestMatrix m = Upload(t, gguf, rows, cols);
  auto out = DeviceBuffer::Allocate(count * cols * 2, "halves");
  ASSERT_TRUE(out.ok());
  ASSERT_TRUE(out->Fill(0xFF).ok());
  ASSERT_TRUE(DequantizeHalves(m.m, row0, count, out->as<uint16_t>(), nullptr).ok());
  const std::vector<uint16_t> got = FromDevice<uint16_t>(*out, count * cols);
  const std::vector<float> want = DequantizeCpu(t, gguf, rows, cols);
  for (int64_t r = 0; r < count; ++r)
    for (int64_t c = 0; c < cols; ++c)
      ASSERT_NEAR(HalfToFloat(got[r * cols + c]), want[(row0 + r) * cols + c],
                  std::fabs(want[(row0 + r) * cols + c]) * 1e-3 + 1e-7)
          << "row " << row0 + r << " col " << c;
  EXPECT_EQ(DequantizeHalves(m.m, 6, 4, out->as<uint16_t>(), nullptr).code(), StatusCode::kInvalidArgument);
}

// W x in double, token-major (n x rows): sum_c w[r][c] x[t][c], plus y0[t * stride + r] when y0 is given.
std::vector<double> ReferenceProduct(const std::vector<float>& w, const std::vector<float>& x, int64_t rows,
                                     int64_t cols, int n, const float* y0, int64_t stride) {
  std::vector<double> want;
  for (int t = 0; t < n; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      double sum = y0 != nullptr ? y0[t * stride + r] : 0.0;
      for (int64_t c = 0; c < cols; ++c) sum += static_cast<double>(w[r * cols + c]) * x[t * cols + c];
      want.push_back(sum);
    }
  }
  return want;
}

// y = W x (+ y0 with add) against a double-precision product of the CPU-decoded weights and the activations' values
// (with kMatVecQ8, x's quantization on the CPU: ops::QuantizeRowQ8, as the CPU SIMD paths' product); rows + 3 floats
// per output token. The tiled product runs with `scratch_rows` rows' worth of scratch (0: all rows in one pass).
struct ProductCase {
  int64_t rows = 0;
  int n = 0;
  Path path = Path::kMatVec;
  bool add = false;
  int64_t cols = 0;  // 0: OddCols
  int64_t scratch_rows = 0;
};
void CheckProduct(WeightType t, const ProductCase& c, double tolerance) {
  std::mt19937 rng(static_cast<unsigned>(c.rows * 131 + c.n * 7 + static_cast<int>(c.path) * 3 + (c.add ? 1 : 0)));
  const int64_t rows = c.rows, cols = c.cols > 0 ? c.cols : OddCols(t);
  const int n = c.n;
  const std::vector<uint8_t> gguf = RandomGgufRows(t, rows, cols, rng);
  TestMatrix m = Upload(t, gguf, rows, cols);
  const std::vector<float> w = DequantizeCpu(t, gguf, rows, cols);
  std::vector<float> x = RandomFloats(n * cols, rng);
  std::fill(x.begin() + 32, x.begin() + 64, 0.0f);  // an all-zero block (int8: d = 0)
  const CpuQ8 xq = QuantizeCpu(x);
  const std::vector<float> xv = c.path == Path::kMatVecQ8 ? Dequantized(xq) : x;
  const int64_t stride = rows + 3;
  const std::vector<float> y0 = RandomFloats(n * stride, rng);
  DeviceBuffer dx = ToDevice(x);
  DeviceBuffer dy = c.add ? ToDevice(y0) : Poisoned(n * stride);
  Status s;
  DeviceQ8 dxq = ToDevice(xq);
  const Q8Activations view = dxq.view();
  if (c.path == Path::kTiled) {
    const size_t bytes = MatMulScratchBytes(c.scratch_rows > 0 ? c.scratch_rows : rows, cols, n);
    auto scratch = DeviceBuffer::Allocate(bytes, "test scratch");
    ASSERT_TRUE(scratch.ok()) << scratch.status().ToString();
    s = MatMulTiled(m.m, dx.as<float>(), n, dy.as<float>(), stride, c.add, Scratch{scratch->get(), bytes}, nullptr);
    ASSERT_TRUE(Synchronize("MatMulTiled").ok());
  } else {
    s = MatVec(m.m, dx.as<float>(), n, dy.as<float>(), stride, c.add, nullptr,
               c.path == Path::kMatVecQ8 ? &view : nullptr);
  }
  ASSERT_TRUE(s.ok()) << s.ToString();
  const std::vector<float> all = FromDevice<float>(dy, n * stride);
  const std::vector<double> want = ReferenceProduct(w, xv, rows, cols, n, c.add ? y0.data() : nullptr, stride);
  std::vector<float> got;
  for (int tk = 0; tk < n; ++tk) {
    for (int64_t r = 0; r < rows; ++r) got.push_back(all[tk * stride + r]);
    // The 3 floats past each token's rows stay as they were.
    for (int64_t r = rows; r < stride; ++r) {
      if (c.add) {
        ASSERT_EQ(all[tk * stride + r], y0[tk * stride + r]) << "token " << tk << " wrote past its rows";
      } else {
        ASSERT_TRUE(std::isnan(all[tk * stride + r])) << "token " << tk << " wrote past its rows";
      }
    }
  }
  EXPECT_LT(RelError(got, want), tolerance)
      << "rows " << rows << " cols " << cols << " tokens " << n << " path " << static_cast<int>(c.path);
}

TEST_P(TypeTest, MatVecQ8MatchesReference) {
  if (!TakesQ8(GetParam())) GTEST_SKIP() << "f32 activations only";
  for (int n : {1, 2, 3, 5, 8, 11, 16}) {
    CheckProduct(GetParam(), {.rows = 37, .n = n, .path = Path::kMatVecQ8, .add = n % 2 == 1}, 1e-5);
    CheckProduct(GetParam(), {.rows = 8, .n = n, .path = Path::kMatVecQ8}, 1e-5);
  }
}

// Gate, up and SwiGLU in one kernel: h against silu(gate . x) * (up . x) in double precision on the quantized
// activations' values, and its quantization bit for bit against the CPU's of the h it wrote.
TEST_P(TypeTest, MatVecSwiGluQ8MatchesReference) {
  const WeightType t = GetParam();
  if (!TakesQ8(t)) GTEST_SKIP() << "f32 activations only";
  const int64_t rows = 96, cols = OddCols(t);
  for (int n : {1, 2, 3, 5, 8, 16}) {
    std::mt19937 rng(static_cast<unsigned>(n * 101));
    const std::vector<uint8_t> gate_rows = RandomGgufRows(t, rows, cols, rng),
                               up_rows = RandomGgufRows(t, rows, cols, rng);
    TestMatrix gate = Upload(t, gate_rows, rows, cols), up = Upload(t, up_rows, rows, cols);
    const std::vector<float> wg = DequantizeCpu(t, gate_rows, rows, cols), wu = DequantizeCpu(t, up_rows, rows, cols);
    const CpuQ8 xq = QuantizeCpu(RandomFloats(n * cols, rng));
    const std::vector<float> xv = Dequantized(xq);
    DeviceQ8 dxq = ToDevice(xq), hq = PoisonedQ8(n * rows);
    DeviceBuffer h = Poisoned(n * rows), u = Poisoned(n * rows);
    const Status s = MatVecSwiGluQ8(gate.m, up.m, dxq.view(), n, h.as<float>(), u.as<float>(), hq.view(), nullptr);
    ASSERT_TRUE(s.ok()) << s.ToString();
    const std::vector<float> got = FromDevice<float>(h, n * rows);
    std::vector<double> want;
    for (int tk = 0; tk < n; ++tk) {
      for (int64_t r = 0; r < rows; ++r) {
        double g = 0, u = 0;
        for (int64_t c = 0; c < cols; ++c) {
          g += static_cast<double>(wg[r * cols + c]) * xv[tk * cols + c];
          u += static_cast<double>(wu[r * cols + c]) * xv[tk * cols + c];
        }
        want.push_back(g / (1.0 + std::exp(-g)) * u);
      }
    }
    EXPECT_LT(RelError(got, want), 1e-5) << "tokens " << n;
    ExpectQ8Equals(hq, got);
  }
  std::mt19937 rng(1);
  TestMatrix odd = Upload(t, RandomGgufRows(t, 37, cols, rng), 37, cols);
  DeviceQ8 any = PoisonedQ8(32 * cols);
  DeviceBuffer h = Poisoned(37);
  EXPECT_FALSE(MatVecSwiGluQ8(odd.m, odd.m, any.view(), 1, h.as<float>(), h.as<float>(), any.view(), nullptr).ok())
      << "rows not a multiple of 32";
}

TEST_P(TypeTest, MatVecMatchesReference) {
  for (int n : {1, 2, 3, 5, 8, 11, 16}) CheckProduct(GetParam(), {.rows = 37, .n = n, .add = n % 2 == 1}, 1e-5);
}

// Three products of different heights in one launch, one of them added.
TEST_P(TypeTest, MatVecManyMatchesReference) {
  const WeightType t = GetParam();
  std::mt19937 rng(9);
  const int64_t cols = OddCols(t);
  const int n = 3;
  const int64_t rows[3] = {5, 37, 64};
  std::vector<TestMatrix> mats;
  std::vector<std::vector<float>> w;
  std::vector<DeviceBuffer> ys;
  std::vector<std::vector<float>> y0;
  Product products[3];
  for (int k = 0; k < 3; ++k) {
    const std::vector<uint8_t> gguf = RandomGgufRows(t, rows[k], cols, rng);
    mats.push_back(Upload(t, gguf, rows[k], cols));
    w.push_back(DequantizeCpu(t, gguf, rows[k], cols));
    y0.push_back(RandomFloats(n * rows[k], rng));
    ys.push_back(k == 1 ? ToDevice(y0[k]) : Poisoned(n * rows[k]));
    products[k] = Product{mats[k].m, ys[k].as<float>(), rows[k], /*add=*/k == 1};
  }
  const std::vector<float> x = RandomFloats(n * cols, rng);
  DeviceBuffer dx = ToDevice(x);
  // f32 activations, then (the quantized types) int8 ones; y[1] starts from y0 in both runs.
  const CpuQ8 xq = QuantizeCpu(x);
  DeviceQ8 dxq = ToDevice(xq);
  const Q8Activations view = dxq.view();
  for (const bool q8 : {false, true}) {
    if (q8 && !TakesQ8(t)) break;
    ASSERT_TRUE(ys[1].Upload(y0[1].data(), y0[1].size() * 4).ok());
    ASSERT_TRUE(MatVecMany(products, 3, dx.as<float>(), n, nullptr, q8 ? &view : nullptr).ok());
    const std::vector<float> xv = q8 ? Dequantized(xq) : x;
    for (int k = 0; k < 3; ++k) {
      const std::vector<float> got = FromDevice<float>(ys[k], n * rows[k]);
      const std::vector<double> want =
          ReferenceProduct(w[k], xv, rows[k], cols, n, k == 1 ? y0[k].data() : nullptr, rows[k]);
      EXPECT_LT(RelError(got, want), 1e-5) << "product " << k << (q8 ? " int8 activations" : "");
    }
  }
}

// f16 operands: the tolerance of half-precision inputs with f32 accumulation. Odd row and token counts (partial
// blocks of 128 rows and 128 tokens), fewer k slices than the copy pipeline's depth (96 columns) and many (768).
TEST_P(TypeTest, MatMulTiledMatchesReference) {
  for (int n : {1, 17, 70, 130, 1030})
    CheckProduct(GetParam(), {.rows = 131, .n = n, .path = Path::kTiled, .add = n == 17 || n == 1030}, 3e-3);
  CheckProduct(GetParam(), {.rows = 5, .n = 130, .path = Path::kTiled}, 3e-3);
}

// A scratch too small for the whole matrix: the rows go in bands of 128 (300 = 128 + 128 + 44).
TEST_P(TypeTest, MatMulTiledInBands) {
  CheckProduct(GetParam(), {.rows = 300, .n = 70, .path = Path::kTiled, .add = true, .scratch_rows = 200}, 3e-3);
}

// PrefillProducts: a step of four products over three matrices of different types and heights (the first again at
// the end), each matrix decoded on the second stream beside the product before it; a product out of order is an
// error.
TEST_F(CudaKernels, PrefillProductsInOrder) {
  std::mt19937 rng(12);
  const int n = 150;
  const int64_t cols = 256;
  const WeightType types[3] = {WeightType::kQ4_0, WeightType::kQ6_K, WeightType::kQ8_0};
  const int64_t rows[3] = {300, 131, 77};
  std::vector<TestMatrix> mats;
  std::vector<std::vector<float>> w;
  for (int k = 0; k < 3; ++k) {
    const std::vector<uint8_t> gguf = RandomGgufRows(types[k], rows[k], cols, rng);
    mats.push_back(Upload(types[k], gguf, rows[k], cols));
    w.push_back(DequantizeCpu(types[k], gguf, rows[k], cols));
  }
  const int use[4] = {0, 1, 2, 0};
  const DeviceMatrix* order[4] = {&mats[0].m, &mats[1].m, &mats[2].m, &mats[0].m};
  const std::vector<float> x = RandomFloats(n * cols, rng);
  DeviceBuffer dx = ToDevice(x);
  std::vector<std::vector<float>> y0;
  std::vector<DeviceBuffer> ys;
  for (int i = 0; i < 4; ++i) {
    y0.push_back(RandomFloats(n * rows[use[i]], rng));
    ys.push_back(i == 2 ? ToDevice(y0[i]) : Poisoned(n * rows[use[i]]));
  }
  auto products = PrefillProducts::Create(300 * cols, cols, n);
  ASSERT_TRUE(products.ok()) << products.status().ToString();
  ASSERT_TRUE((*products)->Begin(order, 4, nullptr).ok());
  for (int i = 0; i < 4; ++i) {
    const DeviceMatrix copy = *order[i];  // the same weights, not the same object (as the model's Product)
    const Status s = (*products)->MatMul(copy, dx.as<float>(), n, ys[i].as<float>(), rows[use[i]], i == 2);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  for (int i = 0; i < 4; ++i) {
    const int k = use[i];
    const std::vector<float> got = FromDevice<float>(ys[i], n * rows[k]);
    const std::vector<double> want =
        ReferenceProduct(w[k], x, rows[k], cols, n, i == 2 ? y0[i].data() : nullptr, rows[k]);
    EXPECT_LT(RelError(got, want), 3e-3) << "product " << i;
  }
  ASSERT_TRUE((*products)->Begin(order, 4, nullptr).ok());
  EXPECT_EQ((*products)->MatMul(*order[1], dx.as<float>(), n, ys[1].as<float>(), rows[1], false).code(),
            StatusCode::kInvalidArgument);
  ASSERT_TRUE(Synchronize("PrefillProducts").ok());
}

// A 7B-like depth: 4096 columns (128 k slices), 259 rows, 300 tokens.
TEST_F(CudaKernels, MatMulTiledLongRows) {
  CheckProduct(WeightType::kQ4_0, {.rows = 259, .n = 300, .path = Path::kTiled, .add = true, .cols = 4096}, 3e-3);
}

TEST_F(CudaKernels, MatMulTiledRefusesTooLittleScratch) {
  std::mt19937 rng(5);
  const std::vector<uint8_t> gguf = RandomGgufRows(WeightType::kQ8_0, 256, 64, rng);
  TestMatrix m = Upload(WeightType::kQ8_0, gguf, 256, 64);
  DeviceBuffer dx = ToDevice(RandomFloats(20 * 64, rng));
  DeviceBuffer dy = Poisoned(20 * 256);
  const size_t bytes = MatMulScratchBytes(100, 64, 20);  // less than a band of 128 rows
  auto scratch = DeviceBuffer::Allocate(bytes, "test scratch");
  ASSERT_TRUE(scratch.ok());
  const Status s =
      MatMulTiled(m.m, dx.as<float>(), 20, dy.as<float>(), 256, false, Scratch{scratch->get(), bytes}, nullptr);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
}

// The dummy weights decode to finite values of about 1/sqrt(cols) (the size that keeps a product's scale).
TEST_P(TypeTest, RandomizedWeightsAreFiniteAndScaled) {
  const WeightType t = GetParam();
  const int64_t rows = 64, cols = OddCols(t) * 2;
  auto q = DeviceBuffer::Allocate(QuantRowBytes(t, cols) * rows, "q");
  auto sc = DeviceBuffer::Allocate(std::max<size_t>(1, rows * (cols / 32) * ScaleBytesPerBlock(t)), "scales");
  ASSERT_TRUE(q.ok() && sc.ok());
  ASSERT_TRUE(RandomizeMatrix(t, rows, cols, q->as<uint8_t>(), sc->as<uint8_t>(), 7, nullptr).ok());
  const DeviceMatrix m{
      t, rows, cols, q->as<uint8_t>(), IsSplit(t) ? sc->as<uint8_t>() : nullptr, QuantRowBytes(t, cols)};
  std::vector<int32_t> all(rows);
  for (int i = 0; i < rows; ++i) all[i] = i;
  DeviceBuffer idx = ToDevice(all);
  DeviceBuffer out = Poisoned(rows * cols);
  ASSERT_TRUE(DequantizeRows(m, idx.as<int32_t>(), rows, out.as<float>(), nullptr).ok());
  const std::vector<float> v = FromDevice<float>(out, rows * cols);
  double ss = 0;
  for (float f : v) {
    ASSERT_TRUE(std::isfinite(f));
    ss += static_cast<double>(f) * f;
  }
  const double rms = std::sqrt(ss / v.size()) * std::sqrt(static_cast<double>(cols));
  EXPECT_GT(rms, 0.2);
  EXPECT_LT(rms, 5.0);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, TypeTest, ::testing::ValuesIn(kTypes),
                         [](const auto& info) { return std::string(Info(info.param).name); });

TEST_F(CudaKernels, RmsNormOfPickedRows) {
  std::mt19937 rng(2);
  const int dim = 577, rows = 5;
  const std::vector<int32_t> pick = {4, 1, 2};
  const std::vector<float> x = RandomFloats(rows * dim, rng, 3.0f), w = RandomFloats(dim, rng);
  DeviceBuffer dx = ToDevice(x), dw = ToDevice(w), di = ToDevice(pick);
  DeviceBuffer dy = Poisoned(pick.size() * dim);
  ASSERT_TRUE(RmsNorm(dx.as<float>(), di.as<int32_t>(), 3, dim, dw.as<float>(), 1e-5f, dy.as<float>(), nullptr).ok());
  const std::vector<float> got = FromDevice<float>(dy, pick.size() * dim);
  std::vector<double> want;
  for (int r : pick) {
    double ss = 0;
    for (int i = 0; i < dim; ++i) ss += static_cast<double>(x[r * dim + i]) * x[r * dim + i];
    const double scale = 1.0 / std::sqrt(ss / dim + 1e-5);
    for (int i = 0; i < dim; ++i) want.push_back(x[r * dim + i] * scale * w[i]);
  }
  EXPECT_LT(RelError(got, want), 1e-6);
}

// QuantizeQ8, and the quantizing RmsNormQ8 and SwiGluQ8: the same int8 values and (d, s) as the CPU's QuantizeRowQ8
// of the same floats.
TEST_F(CudaKernels, QuantizeQ8EqualsCpu) {
  std::mt19937 rng(4);
  const int count = 32 * 37;
  std::vector<float> x = RandomFloats(count, rng, 2.0f);
  std::fill(x.begin() + 64, x.begin() + 96, 0.0f);
  x[200] = 127.5f;  // values that round to ties once scaled
  x[201] = -0.5f;
  DeviceBuffer dx = ToDevice(x);
  DeviceQ8 out = PoisonedQ8(count);
  ASSERT_TRUE(QuantizeQ8(dx.as<float>(), count, out.view(), nullptr).ok());
  ExpectQ8Equals(out, x);
  EXPECT_FALSE(QuantizeQ8(dx.as<float>(), 33, out.view(), nullptr).ok());
}

TEST_F(CudaKernels, RmsNormQ8QuantizesItsOutput) {
  std::mt19937 rng(5);
  const int dim = 32 * 19, rows = 4;
  const std::vector<int32_t> pick = {3, 0, 2};
  const std::vector<float> x = RandomFloats(rows * dim, rng, 3.0f), w = RandomFloats(dim, rng);
  DeviceBuffer dx = ToDevice(x), dw = ToDevice(w), di = ToDevice(pick);
  DeviceBuffer dy = Poisoned(pick.size() * dim), dy2 = Poisoned(pick.size() * dim);
  DeviceQ8 q = PoisonedQ8(pick.size() * dim);
  ASSERT_TRUE(RmsNorm(dx.as<float>(), di.as<int32_t>(), 3, dim, dw.as<float>(), 1e-5f, dy.as<float>(), nullptr).ok());
  ASSERT_TRUE(
      RmsNormQ8(dx.as<float>(), di.as<int32_t>(), 3, dim, dw.as<float>(), 1e-5f, dy2.as<float>(), q.view(), nullptr)
          .ok());
  const std::vector<float> y = FromDevice<float>(dy, pick.size() * dim), y2 = FromDevice<float>(dy2, pick.size() * dim);
  ASSERT_EQ(y, y2);
  ExpectQ8Equals(q, y2);
}

TEST_F(CudaKernels, SwiGluQ8QuantizesItsOutput) {
  std::mt19937 rng(6);
  const int n = 32 * 41;
  const std::vector<float> g = RandomFloats(n, rng, 4.0f), u = RandomFloats(n, rng);
  DeviceBuffer dg = ToDevice(g), dg2 = ToDevice(g), du = ToDevice(u);
  DeviceQ8 q = PoisonedQ8(n);
  ASSERT_TRUE(SwiGlu(dg.as<float>(), du.as<float>(), n, nullptr).ok());
  ASSERT_TRUE(SwiGluQ8(dg2.as<float>(), du.as<float>(), n, q.view(), nullptr).ok());
  const std::vector<float> h = FromDevice<float>(dg, n), h2 = FromDevice<float>(dg2, n);
  ASSERT_EQ(h, h2);
  ExpectQ8Equals(q, h2);
}

TEST_F(CudaKernels, SwiGlu) {
  std::mt19937 rng(3);
  const int n = 1001;
  const std::vector<float> g = RandomFloats(n, rng, 4.0f), u = RandomFloats(n, rng);
  DeviceBuffer dg = ToDevice(g), du = ToDevice(u);
  ASSERT_TRUE(SwiGlu(dg.as<float>(), du.as<float>(), n, nullptr).ok());
  const std::vector<float> got = FromDevice<float>(dg, n);
  std::vector<double> want;
  for (int i = 0; i < n; ++i) want.push_back(g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i]);
  EXPECT_LT(RelError(got, want), 1e-6);
}

// The q/k step and attention over a paged pool: two sequences whose pages are scattered over the pool, all their
// tokens in one batch (each token attends to the earlier ones of its sequence and itself), checked against a
// double-precision reference of the same steps on the CPU.
struct AttnCase {
  int n_head, n_head_kv, head_dim, n_rot;
  bool halves, qk_norm;
  bool bias = false;  // q/k/v biases (qwen2)
};

class AttentionTest : public OnDevice<::testing::TestWithParam<AttnCase>> {};

TEST_P(AttentionTest, PrepareAndAttendMatchReference) {
  const AttnCase c = GetParam();
  std::mt19937 rng(c.n_head * 31 + c.head_dim);
  const int n_layer = 2, layer = 1, hd = c.head_dim, hdv = c.head_dim;
  const int lens[2] = {70, 41};  // 3 pages and 2 pages (partial last pages)
  const std::vector<std::vector<int32_t>> tables = {{5, 1, 7}, {2, 6}};
  const int n = lens[0] + lens[1];
  KvPool pool;
  pool.n_layer = n_layer;
  pool.n_head_kv = c.n_head_kv;
  pool.k_dim = hd;
  pool.v_dim = hdv;
  pool.page_bytes = static_cast<size_t>(n_layer) * c.n_head_kv * kPageTokens * (hd + hdv) * 2;
  const int n_pages = 8;
  auto pool_buf = DeviceBuffer::Allocate(pool.page_bytes * n_pages, "pool");
  ASSERT_TRUE(pool_buf.ok());
  ASSERT_TRUE(pool_buf->Fill(0xFF).ok());
  pool.base = pool_buf->as<uint8_t>();
  std::vector<int32_t> pos, first, pages;
  for (int s = 0; s < 2; ++s) {
    const int at = static_cast<int>(pages.size());
    pages.insert(pages.end(), tables[s].begin(), tables[s].end());
    for (int p = 0; p < lens[s]; ++p) {
      pos.push_back(p);
      first.push_back(at);
    }
  }
  const size_t qn = static_cast<size_t>(n) * c.n_head * hd, kn = static_cast<size_t>(n) * c.n_head_kv * hd;
  std::vector<float> q = RandomFloats(qn, rng), k = RandomFloats(kn, rng), v = RandomFloats(kn, rng);
  std::vector<float> qw = RandomFloats(hd, rng), kw = RandomFloats(hd, rng);
  std::vector<float> qb, kb, vb;
  if (c.bias) {
    qb = RandomFloats(static_cast<size_t>(c.n_head) * hd, rng);
    kb = RandomFloats(static_cast<size_t>(c.n_head_kv) * hd, rng);
    vb = RandomFloats(static_cast<size_t>(c.n_head_kv) * hdv, rng);
  }
  std::vector<float> inv_freq(c.n_rot / 2);
  for (int j = 0; j < c.n_rot / 2; ++j)  // a YaRN-like table: base^(-2j/n_rot), the low frequencies scaled by 1/4
    inv_freq[j] = static_cast<float>(std::pow(10000.0, -2.0 * j / c.n_rot) * (j > c.n_rot / 4 ? 0.25 : 1.0));
  DeviceBuffer dq = ToDevice(q), dk = ToDevice(k), dv = ToDevice(v), dqw = ToDevice(qw), dkw = ToDevice(kw);
  DeviceBuffer dqb = ToDevice(qb), dkb = ToDevice(kb), dvb = ToDevice(vb);
  DeviceBuffer dfreq = ToDevice(inv_freq), dpos = ToDevice(pos), dfirst = ToDevice(first), dpages = ToDevice(pages);
  QkvArgs a;
  a.q = dq.as<float>();
  a.k = dk.as<float>();
  a.v = dv.as<float>();
  a.n_head = c.n_head;
  a.q_norm = c.qk_norm ? dqw.as<float>() : nullptr;
  a.k_norm = c.qk_norm ? dkw.as<float>() : nullptr;
  a.q_bias = c.bias ? dqb.as<float>() : nullptr;
  a.k_bias = c.bias ? dkb.as<float>() : nullptr;
  a.v_bias = c.bias ? dvb.as<float>() : nullptr;
  a.eps = 1e-6f;
  a.inv_freq = dfreq.as<float>();
  a.n_rot = c.n_rot;
  a.cos_sin_factor = c.qk_norm ? 1.0f : 1.1386f;  // YaRN's 1 + 0.1 ln(4) in the cases without q/k norm
  a.halves = c.halves;
  a.layer = layer;
  const TokenPlaces places{dpos.as<int32_t>(), dfirst.as<int32_t>(), dpages.as<int32_t>()};
  ASSERT_TRUE(PrepareQkv(a, pool, places, n, nullptr).ok());
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  DeviceBuffer dout = Poisoned(static_cast<size_t>(n) * c.n_head * hdv);
  ASSERT_TRUE(
      Attention(dq.as<float>(), c.n_head, scale, pool, layer, places, n, dout.as<float>(), nullptr, nullptr).ok());
  // The same on the tensor cores where the head dims allow (the second sequence starts inside the second 64-token
  // block: two passes there).
  DeviceBuffer dflash = Poisoned(static_cast<size_t>(n) * c.n_head * hdv);
  if (FlashAttentionTakes(hd, hdv)) {
    ASSERT_TRUE(
        FlashAttention(dq.as<float>(), c.n_head, scale, pool, layer, places, n, dflash.as<float>(), nullptr).ok());
  } else {
    EXPECT_EQ(
        FlashAttention(dq.as<float>(), c.n_head, scale, pool, layer, places, n, dflash.as<float>(), nullptr).code(),
        StatusCode::kUnsupported);
  }

  // The reference: bias, norm and RoPE in double, per head.
  auto prepare = [&](std::vector<float>& t, int heads, const std::vector<float>& w, const std::vector<float>& b) {
    std::vector<double> r(t.begin(), t.end());
    for (int i = 0; i < n; ++i) {
      for (int h = 0; h < heads; ++h) {
        double* x = &r[(static_cast<size_t>(i) * heads + h) * hd];
        if (c.bias)
          for (int d = 0; d < hd; ++d) x[d] += b[static_cast<size_t>(h) * hd + d];
        if (c.qk_norm) {
          double ss = 0;
          for (int d = 0; d < hd; ++d) ss += x[d] * x[d];
          const double sc = 1.0 / std::sqrt(ss / hd + 1e-6);
          for (int d = 0; d < hd; ++d) x[d] = x[d] * sc * w[d];
        }
        for (int j = 0; j < c.n_rot / 2; ++j) {
          const double ang = static_cast<double>(static_cast<float>(pos[i]) * inv_freq[j]);
          const int ia = c.halves ? j : 2 * j, ib = c.halves ? j + c.n_rot / 2 : 2 * j + 1;
          const double x0 = x[ia], x1 = x[ib], f = a.cos_sin_factor;
          x[ia] = x0 * f * std::cos(ang) - x1 * f * std::sin(ang);
          x[ib] = x0 * f * std::sin(ang) + x1 * f * std::cos(ang);
        }
      }
    }
    return r;
  };
  const std::vector<double> rq = prepare(q, c.n_head, qw, qb), rk = prepare(k, c.n_head_kv, kw, kb);
  EXPECT_LT(RelError(FromDevice<float>(dq, qn), rq), 2e-6);

  // The stored rows: the reference's k and v rounded to f16, at each token's page slot.
  std::vector<uint16_t> pool_host(pool.page_bytes * n_pages / 2);
  ASSERT_TRUE(pool_buf->Download(pool_host.data(), pool.page_bytes * n_pages).ok());
  auto row = [&](int i, int h, bool key) {
    const int page = pages[first[i] + pos[i] / kPageTokens], slot = pos[i] % kPageTokens;
    const size_t lh = static_cast<size_t>(layer) * c.n_head_kv + h;
    const size_t at =
        page * (pool.page_bytes / 2) +
        (key ? (lh * kPageTokens + slot) * hd
             : static_cast<size_t>(n_layer) * c.n_head_kv * kPageTokens * hd + (lh * kPageTokens + slot) * hdv);
    return &pool_host[at];
  };
  std::vector<float> stored;
  std::vector<double> stored_want;
  for (int i = 0; i < n; ++i) {
    for (int h = 0; h < c.n_head_kv; ++h) {
      for (int d = 0; d < hd; ++d) {
        stored.push_back(HalfToFloat(row(i, h, true)[d]));
        stored_want.push_back(rk[(static_cast<size_t>(i) * c.n_head_kv + h) * hd + d]);
        stored.push_back(HalfToFloat(row(i, h, false)[d]));
        stored_want.push_back(v[(static_cast<size_t>(i) * c.n_head_kv + h) * hdv + d] +
                              (c.bias ? vb[static_cast<size_t>(h) * hdv + d] : 0.0));
      }
    }
  }
  EXPECT_LT(RelError(stored, stored_want), 1e-3);  // f16 rounding

  // Attention over the stored (f16) rows, in double.
  const int group = c.n_head / c.n_head_kv;
  std::vector<double> want;
  for (int i = 0; i < n; ++i) {
    const int start = i - pos[i];  // the sequence's first token in the batch
    for (int hq = 0; hq < c.n_head; ++hq) {
      const int h = hq / group;
      const double* qv = &rq[(static_cast<size_t>(i) * c.n_head + hq) * hd];
      std::vector<double> s(pos[i] + 1);
      double mx = -INFINITY;
      for (int p = 0; p <= pos[i]; ++p) {
        const uint16_t* kr = row(start + p, h, true);
        double dot = 0;
        for (int d = 0; d < hd; ++d) dot += qv[d] * HalfToFloat(kr[d]);
        s[p] = dot * scale;
        mx = std::max(mx, s[p]);
      }
      double sum = 0;
      for (double& e : s) sum += (e = std::exp(e - mx));
      for (int d = 0; d < hdv; ++d) {
        double o = 0;
        for (int p = 0; p <= pos[i]; ++p) o += s[p] * HalfToFloat(row(start + p, h, false)[d]);
        want.push_back(o / sum);
      }
    }
  }
  EXPECT_LT(RelError(FromDevice<float>(dout, want.size()), want), 1e-5);
  if (FlashAttentionTakes(hd, hdv)) {  // f16 queries and softmax weights
    EXPECT_LT(RelError(FromDevice<float>(dflash, want.size()), want), 3e-3) << "FlashAttention";
  }

  // A decode-sized step (split over blocks and merged): the last 3 tokens of the first sequence and the last 2 of the
  // second, over the rows stored above.
  const std::vector<int> picked = {lens[0] - 3, lens[0] - 2, lens[0] - 1, n - 2, n - 1};
  const int m = static_cast<int>(picked.size());
  std::vector<int32_t> ppos, pfirst;
  std::vector<float> pq;
  std::vector<double> pwant;
  const size_t row_q = static_cast<size_t>(c.n_head) * hd, row_o = static_cast<size_t>(c.n_head) * hdv;
  for (int i : picked) {
    ppos.push_back(pos[i]);
    pfirst.push_back(first[i]);
    for (size_t e = 0; e < row_q; ++e) pq.push_back(static_cast<float>(rq[i * row_q + e]));
    pwant.insert(pwant.end(), want.begin() + i * row_o, want.begin() + (i + 1) * row_o);
  }
  ASSERT_GT(AttentionSplits(c.n_head_kv, m), 1);
  DeviceBuffer dpq = ToDevice(pq), dppos = ToDevice(ppos), dpfirst = ToDevice(pfirst);
  DeviceBuffer scratch = Poisoned(AttentionScratchFloats(m, c.n_head, c.n_head_kv, hdv));
  DeviceBuffer dpout = Poisoned(m * row_o);
  const TokenPlaces pplaces{dppos.as<int32_t>(), dpfirst.as<int32_t>(), dpages.as<int32_t>()};
  ASSERT_TRUE(Attention(dpq.as<float>(), c.n_head, scale, pool, layer, pplaces, m, dpout.as<float>(),
                        scratch.as<float>(), nullptr)
                  .ok());
  EXPECT_LT(RelError(FromDevice<float>(dpout, pwant.size()), pwant), 1e-5);

  // Both again with the output quantized too (whole-block value rows only): the same output, and its quantization
  // bit for bit the CPU's.
  DeviceQ8 q8 = PoisonedQ8(n * row_o), pq8 = PoisonedQ8(m * row_o);
  DeviceBuffer dout2 = Poisoned(n * row_o), dpout2 = Poisoned(m * row_o);
  const Q8Activations q8_view = q8.view(), pq8_view = pq8.view();
  const Status whole =
      Attention(dq.as<float>(), c.n_head, scale, pool, layer, places, n, dout2.as<float>(), nullptr, nullptr, &q8_view);
  const Status split = Attention(dpq.as<float>(), c.n_head, scale, pool, layer, pplaces, m, dpout2.as<float>(),
                                 scratch.as<float>(), nullptr, &pq8_view);
  if (hdv % 32 != 0) {
    EXPECT_EQ(whole.code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(split.code(), StatusCode::kInvalidArgument);
    return;
  }
  ASSERT_TRUE(whole.ok() && split.ok()) << whole.ToString() << split.ToString();
  const std::vector<float> out2 = FromDevice<float>(dout2, n * row_o), pout2 = FromDevice<float>(dpout2, m * row_o);
  EXPECT_EQ(out2, FromDevice<float>(dout, n * row_o));
  EXPECT_EQ(pout2, FromDevice<float>(dpout, m * row_o));
  ExpectQ8Equals(q8, out2);
  ExpectQ8Equals(pq8, pout2);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(AttnCase{9, 3, 64, 64, false, false},   // SmolLM2: group 3, llama RoPE
                                           AttnCase{16, 8, 128, 128, true, true},  // qwen3: halves, q/k norm
                                           AttnCase{8, 1, 96, 32, true, false},    // group 8, partial rotary
                                           AttnCase{4, 4, 256, 128, false, true},  // group 1, widest head
                                           AttnCase{4, 2, 16, 16, false, false},   // the llama fixture's heads
                                           AttnCase{12, 2, 128, 128, true, false, true}),  // qwen2: q/k/v biases
                         [](const auto& info) { return "case" + std::to_string(info.index); });

TEST_F(CudaKernels, GreedySamplingTakesTheFirstMaximum) {
  std::mt19937 rng(4);
  const int rows = 3, vocab = 50001;
  std::vector<float> logits = RandomFloats(rows * vocab, rng);
  logits[0 * vocab + 777] = 9.0f;
  logits[1 * vocab + 50000] = 9.0f;  // the last id
  logits[2 * vocab + 12] = 9.0f;     // a tie: the first wins
  logits[2 * vocab + 40000] = 9.0f;
  DeviceBuffer dl = ToDevice(logits);
  auto out = DeviceBuffer::Allocate(rows * 4, "ids");
  ASSERT_TRUE(out.ok());
  ASSERT_TRUE(out->Fill(0xFF).ok());
  ASSERT_TRUE(Sample(dl.as<float>(), rows, vocab, 0.0f, 1, out->as<int32_t>(), nullptr).ok());
  EXPECT_EQ(FromDevice<int32_t>(*out, rows), (std::vector<int32_t>{777, 50000, 12}));
}

// Draws at temperature 2 over 4 tokens follow softmax(logits / 2): 4000 draws (seeds), each frequency within 0.03.
TEST_F(CudaKernels, TemperatureSamplingFollowsSoftmax) {
  const std::vector<float> row = {0.0f, 1.0f, 2.0f, -1.0f};
  const int draws = 4000;
  std::vector<float> logits;
  for (int i = 0; i < draws; ++i) logits.insert(logits.end(), row.begin(), row.end());
  DeviceBuffer dl = ToDevice(logits);
  auto out = DeviceBuffer::Allocate(draws * 4, "ids");
  ASSERT_TRUE(out.ok());
  ASSERT_TRUE(Sample(dl.as<float>(), draws, 4, 2.0f, 12345, out->as<int32_t>(), nullptr).ok());
  const std::vector<int32_t> ids = FromDevice<int32_t>(*out, draws);
  double z = 0;
  for (float l : row) z += std::exp(l / 2.0);
  for (int t = 0; t < 4; ++t) {
    const double freq = std::count(ids.begin(), ids.end(), t) / static_cast<double>(draws);
    EXPECT_NEAR(freq, std::exp(row[t] / 2.0) / z, 0.03) << "token " << t;
  }
}

TEST_F(CudaKernels, BadShapesAreErrors) {
  DeviceMatrix m{WeightType::kQ4_K, 4, 100, nullptr, nullptr, 0};
  EXPECT_EQ(MatVec(m, nullptr, 1, nullptr, 4, false, nullptr).code(), StatusCode::kInvalidArgument);
  m = DeviceMatrix{WeightType::kF16, 4, 64, nullptr, nullptr, 128};
  EXPECT_EQ(MatVec(m, nullptr, 17, nullptr, 4, false, nullptr).code(), StatusCode::kInvalidArgument);
  KvPool pool;
  pool.n_head_kv = 1;
  pool.k_dim = 64;
  pool.v_dim = 64;
  EXPECT_EQ(Attention(nullptr, 16, 1.0f, pool, 0, TokenPlaces{}, 1, nullptr, nullptr, nullptr).code(),
            StatusCode::kUnsupported);
}

}  // namespace
}  // namespace lr::cuda
