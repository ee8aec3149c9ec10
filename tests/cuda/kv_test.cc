// Compressed KV rows on the device against kvquant's CPU code: the device encoder (EncodeKvRows) byte for byte
// against RowCodec::EncodeRow for every format, in KvCache's page layout (rows of several layers and heads, pages in
// a shuffled order, odd token counts, with and without calibration centers, weights and rotating key centers);
// attention on the codes (CodedAttention), calibrated or not, against kvquant's double-precision reference
// (AttendReference) for every format, GQA groups 1 to 8, odd context lengths across page boundaries, decode steps of
// several sequences and prefills of two sequences, contexts of 6400 rows (several pages per split); shared-prefix
// attention against per-sequence attention and the reference.
// Outputs are poisoned (NaN) first. Skipped when no CUDA device is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda/device.h"
#include "cuda/kv_attention.h"
#include "cuda/kv_codec.h"
#include "kvquant/attention_reference.h"
#include "kvquant/kvquant.h"
#include "tests/cuda/device_test_util.h"

namespace lr::cuda {
namespace {

using testing::FromDevice;
using testing::ToDevice;
using CudaKv = testing::OnDevice<::testing::TestWithParam<std::string>>;

std::vector<float> Gaussian(size_t n, std::mt19937& rng, float sd = 1.0f) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// A cache of n_layer x n_head_kv heads in KvCache's page layout, on the host and the device, with its codecs.
struct TestCache {
  int n_layer, n_head_kv, k_dim, v_dim;
  std::vector<kvquant::RowCodec> k, v;  // [layer * n_head_kv + head]
  size_t k_row, v_row, page_bytes;
  std::vector<uint8_t> host;  // n_pages pages
  int n_pages;
  DeviceCodecs dk, dv;
  DeviceBuffer pool;

  TestCache(const std::string& kf, const std::string& vf, int layers, int heads, int kd, int vd, int pages,
            bool calibrated, std::mt19937& rng)
      : n_layer(layers), n_head_kv(heads), k_dim(kd), v_dim(vd), n_pages(pages) {
    for (int l = 0; l < layers; ++l) {
      for (int h = 0; h < heads; ++h) {
        k.push_back(*kvquant::RowCodec::Create(kf, kd, 7, l, h));
        v.push_back(*kvquant::RowCodec::Create(vf, vd, 7, l, h));
        if (calibrated) {
          std::uniform_real_distribution<float> w(0.5f, 2.0f);
          std::vector<float> ck = Gaussian(kd, rng, 0.5f), wk(kd), cv = Gaussian(vd, rng, 0.5f), wv(vd);
          for (float& x : wk) x = w(rng);
          for (float& x : wv) x = w(rng);
          if (!k.back().is_f16()) {
            EXPECT_TRUE(k.back().SetCenter(ck).ok() && k.back().SetWeights(wk).ok());
            // Rotating centers on a few key channel pairs (as the calibration's: RoPE-like angles, large offsets);
            // fewer on some heads, so that the device pads them.
            std::vector<kvquant::RotatingCenter> pairs;
            std::uniform_real_distribution<float> theta(0.0005f, 1.0f);
            for (int j = 0; j < 2 + h % 3; ++j) pairs.push_back({2 * j + 1, kd - 2 - 2 * j, theta(rng), 3.0f, -2.5f});
            EXPECT_TRUE(k.back().SetRotatingCenter(pairs).ok());
          }
          if (!v.back().is_f16()) {
            EXPECT_TRUE(v.back().SetCenter(cv).ok() && v.back().SetWeights(wv).ok());
          }
        }
      }
    }
    k_row = k[0].row_bytes();
    v_row = v[0].row_bytes();
    page_bytes = static_cast<size_t>(kPageTokens) * layers * heads * (k_row + v_row);
    host.assign(page_bytes * pages, 0);
    std::vector<const kvquant::RowCodec*> kp, vp;
    for (size_t i = 0; i < k.size(); ++i) kp.push_back(&k[i]), vp.push_back(&v[i]);
    auto a = DeviceCodecs::Upload(kp, heads, false);
    auto b = DeviceCodecs::Upload(vp, heads, true);
    EXPECT_TRUE(a.ok() && b.ok()) << a.status().ToString() << b.status().ToString();
    dk = std::move(a).value();
    dv = std::move(b).value();
  }
  KvPages Pages() const {
    return KvPages{pool.as<uint8_t>(),     page_bytes, n_layer, n_head_kv, static_cast<int>(k_row),
                   static_cast<int>(v_row)};
  }
  size_t KOffset(int l, int h) const { return (static_cast<size_t>(l) * n_head_kv + h) * kPageTokens * k_row; }
  size_t VOffset(int l, int h) const {
    return static_cast<size_t>(n_layer) * n_head_kv * kPageTokens * k_row +
           (static_cast<size_t>(l) * n_head_kv + h) * kPageTokens * v_row;
  }
  // Encodes random rows of every position of `table` (len positions) on the CPU into the host pages.
  void Fill(const std::vector<int>& table, int begin, int len, std::mt19937& rng) {
    for (int pos = begin; pos < len; ++pos) {
      uint8_t* page = host.data() + page_bytes * table[pos / kPageTokens];
      for (int l = 0; l < n_layer; ++l) {
        for (int h = 0; h < n_head_kv; ++h) {
          const std::vector<float> kx = Gaussian(k_dim, rng), vx = Gaussian(v_dim, rng);
          const size_t i = static_cast<size_t>(l) * n_head_kv + h;
          k[i].EncodeRow(kx.data(), page + KOffset(l, h) + (pos % kPageTokens) * k_row, pos);
          v[i].EncodeRow(vx.data(), page + VOffset(l, h) + (pos % kPageTokens) * v_row, pos);
        }
      }
    }
  }
  // Sequences forked from a prompt of `prompt` rows on the pages `shared`, each with its own tail of tails[i] rows
  // on fresh pages numbered from `next`: fills the prompt and the tails; tables and pos get each sequence's page
  // table and last position.
  void FillForks(const std::vector<int>& shared, int prompt, const std::vector<int>& tails, int next, std::mt19937& rng,
                 std::vector<std::vector<int>>* tables, std::vector<int>* pos) {
    Fill(shared, 0, prompt, rng);
    for (int t : tails) {
      std::vector<int> tb = shared;
      while (static_cast<int>(tb.size()) * kPageTokens < prompt + t) tb.push_back(next++);
      Fill(tb, prompt, prompt + t, rng);
      tables->push_back(tb);
      pos->push_back(prompt + t - 1);
    }
  }
  void UploadPool() { pool = ToDevice(host); }
  // kvquant's spans of positions [begin, end) of a sequence.
  std::vector<kvquant::RowSpan> Spans(const std::vector<int>& table, int l, int h, int begin, int end) const {
    std::vector<kvquant::RowSpan> s;
    for (int p = begin; p < end;) {
      const int n = std::min(kPageTokens - p % kPageTokens, end - p);
      const uint8_t* page = host.data() + page_bytes * table[p / kPageTokens];
      s.push_back(
          {page + KOffset(l, h) + (p % kPageTokens) * k_row, page + VOffset(l, h) + (p % kPageTokens) * v_row, n, p});
      p += n;
    }
    return s;
  }
  // kvquant::AttendReference of the `group` query rows at q (KV head h of layer l) over positions [0, len) of a
  // sequence.
  std::vector<float> Reference(const std::vector<int>& table, int l, int h, int len, const float* q, int group,
                               float scale) const {
    const std::vector<kvquant::RowSpan> spans = Spans(table, l, h, 0, len);
    const size_t ci = static_cast<size_t>(l) * n_head_kv + h;
    const kvquant::CodedSpans part{&k[ci], &v[ci], spans};
    std::vector<float> out(static_cast<size_t>(group) * v_dim);
    kvquant::AttendReference({&part, 1}, 0, q, group, scale, out.data());
    return out;
  }
};

// Token places on the device: token i at pos[i] of the sequence with page table tables[i], or tables[0] for all
// when there is one table.
struct TestPlaces {
  DeviceBuffer pos, first, pages;
  TokenPlaces places;
  TestPlaces(const std::vector<int>& p, const std::vector<std::vector<int>>& tables) {
    std::vector<int32_t> f, all;
    for (const auto& t : tables) {
      f.push_back(static_cast<int32_t>(all.size()));
      all.insert(all.end(), t.begin(), t.end());
    }
    f.resize(p.size(), 0);
    pos = ToDevice(std::vector<int32_t>(p.begin(), p.end()));
    first = ToDevice(f);
    pages = ToDevice(all);
    places = TokenPlaces{pos.as<int32_t>(), first.as<int32_t>(), pages.as<int32_t>()};
  }
};

std::vector<std::string> AllFormats() {
  std::vector<std::string> names;
  for (const kvquant::FormatInfo& f : kvquant::ListFormats()) names.emplace_back(f.name);
  return names;
}

// Shuffled page ids 0..n-1.
std::vector<int> ShuffledPages(int n, std::mt19937& rng) {
  std::vector<int> t(n);
  std::iota(t.begin(), t.end(), 0);
  std::shuffle(t.begin(), t.end(), rng);
  return t;
}

TEST_P(CudaKv, EncodeMatchesCpuBytes) {
  const std::string format = GetParam();
  for (int dim : {64, 96, 128, 192, 256}) {
    if (!kvquant::RowCodec::Create(format, dim, 7, 0, 0).ok()) continue;  // hx3: multiples of 64
    for (bool calibrated : {false, true}) {
      std::mt19937 rng(dim + calibrated);
      const int layers = 2, heads = 3, n = 37;
      const int pages = (n + kPageTokens - 1) / kPageTokens;
      TestCache c(format, format, layers, heads, dim, dim, pages, calibrated, rng);
      c.UploadPool();
      ASSERT_TRUE(c.pool.Fill(0).ok());
      const std::vector<int> table = ShuffledPages(pages, rng);
      std::vector<int> pos(n);
      std::iota(pos.begin(), pos.end(), 0);
      TestPlaces tp(pos, std::vector<std::vector<int>>(1, table));
      // Rows with a wide spread of magnitudes (scales near f16's limits are where rounding differs first).
      std::vector<float> rows = Gaussian(static_cast<size_t>(n) * heads * dim, rng);
      for (int i = 0; i < n * heads; ++i)
        for (int e = 0; e < dim; ++e) rows[static_cast<size_t>(i) * dim + e] *= std::ldexp(1.0f, i % 9 - 4);
      DeviceBuffer drows = ToDevice(rows);
      const int layer = 1;
      // Keys and values in one launch here; VerifyEncoder below encodes one format at a time.
      ASSERT_TRUE(EncodeKvRows(c.dk.format(), drows.as<float>(), c.dv.format(), drows.as<float>(), c.Pages(), layer,
                               tp.places, n, nullptr)
                      .ok());
      const std::vector<uint8_t> got = FromDevice<uint8_t>(c.pool, c.host.size());
      std::vector<uint8_t> want(c.k_row);
      int mismatches = 0;
      for (int i = 0; i < n; ++i) {
        const uint8_t* page = got.data() + c.page_bytes * table[i / kPageTokens];
        for (int h = 0; h < heads; ++h) {
          const float* x = &rows[(static_cast<size_t>(i) * heads + h) * dim];
          const size_t ci = static_cast<size_t>(layer) * heads + h;
          for (int values = 0; values < 2; ++values) {
            const kvquant::RowCodec& codec = values ? c.v[ci] : c.k[ci];
            codec.EncodeRow(x, want.data(), i);  // i: the row's position (rotating centers)
            const uint8_t* at =
                page + (values ? c.VOffset(layer, h) : c.KOffset(layer, h)) + (i % kPageTokens) * codec.row_bytes();
            if (std::memcmp(at, want.data(), want.size()) != 0 && ++mismatches <= 3) {
              size_t b = 0;
              while (at[b] == want[b]) ++b;
              std::string bytes;  // the first bytes of both rows, and where in the pool the CPU's row is found
              for (size_t j = 0; j < std::min<size_t>(12, want.size()); ++j)
                bytes.append(" ").append(std::to_string(at[j])).append("/").append(std::to_string(want[j]));
              const auto found = std::search(got.begin(), got.end(), want.begin(), want.end());
              ADD_FAILURE() << format << " dim " << dim << (calibrated ? " calibrated" : "") << " token " << i
                            << " head " << h << (values ? " value" : " key") << ": first differing byte " << b
                            << " (device " << int(at[b]) << ", cpu " << int(want[b]) << "); device/cpu:" << bytes
                            << "; cpu row in the pool at "
                            << (found == got.end() ? std::string("none") : std::to_string(found - got.begin()))
                            << ", expected at " << (at - got.data());
            }
          }
        }
      }
      EXPECT_EQ(mismatches, 0) << format << " dim " << dim;
      // The check a cache runs once on its codecs agrees.
      for (int values = 0; values < 2; ++values) {
        std::vector<const kvquant::RowCodec*> layer0;
        for (int h = 0; h < heads; ++h) layer0.push_back(values ? &c.v[h] : &c.k[h]);
        const Status s = VerifyEncoder(values ? c.dv : c.dk, layer0, values);
        EXPECT_TRUE(s.ok()) << s.ToString();
      }
    }
  }
}

// ||got - want|| / ||want||.
template <typename T>
double RelError(const float* got, const T* want, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (static_cast<double>(got[i]) - want[i]) * (got[i] - want[i]);
    den += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Decode steps of several sequences (odd lengths across page boundaries), then a prefill of one sequence, for GQA
// groups 1..8, against AttendReference.
TEST_P(CudaKv, AttentionMatchesReference) {
  const std::string format = GetParam();
  for (int dim : {64, 128, 256}) {
    if (!kvquant::RowCodec::Create(format, dim, 7, 0, 0).ok()) continue;
    for (int group : {1, 3, 4, 8}) {
      std::mt19937 rng(dim * 10 + group);
      const int layers = 2, heads = 2, layer = 1;
      const std::vector<int> lens = {1, 33, 517, 64, 95};
      int total_pages = 0;
      for (int len : lens) total_pages += (len + kPageTokens - 1) / kPageTokens;
      TestCache c(format, format, layers, heads, dim, dim, total_pages, group == 3, rng);
      const std::vector<int> ids = ShuffledPages(total_pages, rng);
      std::vector<std::vector<int>> tables;
      for (size_t s = 0, at = 0; s < lens.size(); ++s) {
        const int np = (lens[s] + kPageTokens - 1) / kPageTokens;
        tables.emplace_back(ids.begin() + at, ids.begin() + at + np);
        at += np;
        c.Fill(tables.back(), 0, lens[s], rng);
      }
      c.UploadPool();
      const int n_head = heads * group, n = static_cast<int>(lens.size());
      std::vector<int> pos;
      for (int len : lens) pos.push_back(len - 1);
      TestPlaces tp(pos, tables);
      const std::vector<float> q = Gaussian(static_cast<size_t>(n) * n_head * dim, rng);
      DeviceBuffer dq = ToDevice(q);
      DeviceBuffer out = testing::Poisoned(static_cast<size_t>(n) * n_head * dim);
      DeviceBuffer scratch =
          ToDevice(std::vector<float>(CodedAttentionScratchFloats(n, n_head, heads, dim, false) + 1));
      const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
      ASSERT_TRUE(CodedAttention(dq.as<float>(), n_head, scale, c.dk.format(), c.dv.format(), c.Pages(), layer,
                                 tp.places, n, 0, out.as<float>(), scratch.as<float>(), nullptr)
                      .ok());
      const std::vector<float> got = FromDevice<float>(out, q.size());
      for (int i = 0; i < n; ++i) {
        for (int h = 0; h < heads; ++h) {
          const size_t at = (static_cast<size_t>(i) * n_head + h * group) * dim;
          const std::vector<float> want = c.Reference(tables[i], layer, h, lens[i], &q[at], group, scale);
          EXPECT_LT(RelError(&got[at], want.data(), want.size()), 1e-4)
              << format << " dim " << dim << " group " << group << " sequence " << i << " head " << h;
        }
      }
    }
  }
}

// Prefill batches of two sequences (the second one's tokens from position 0, the first one's continuing a cached
// prefix), so that a block's tokens straddle the two page tables; key and value widths 64 to 256, GQA groups 2 to 8,
// calibrated or not, against AttendReference.
TEST_P(CudaKv, PrefillMatchesReference) {
  const std::string format = GetParam();
  struct Case {
    int dim, group, cached, prefill_a, prefill_b;
    bool calibrated;
  };
  for (const Case& cs : {Case{128, 4, 25, 45, 21, true}, Case{64, 8, 0, 37, 50, false}, Case{256, 2, 70, 40, 9, true},
                         Case{96, 3, 31, 33, 34, true}, Case{128, 1, 3, 70, 2, false}}) {
    if (!kvquant::RowCodec::Create(format, cs.dim, 7, 0, 0).ok()) continue;
    const int dim = cs.dim, group = cs.group, heads = 2, layers = 2, layer = 1;
    const int len_a = cs.cached + cs.prefill_a, len_b = cs.prefill_b;
    const int pages_a = (len_a + kPageTokens - 1) / kPageTokens, pages_b = (len_b + kPageTokens - 1) / kPageTokens;
    std::mt19937 rng(dim + group);
    TestCache c(format, format, layers, heads, dim, dim, pages_a + pages_b, cs.calibrated, rng);
    const std::vector<int> ids = ShuffledPages(pages_a + pages_b, rng);
    const std::vector<std::vector<int>> tables = {{ids.begin(), ids.begin() + pages_a},
                                                  {ids.begin() + pages_a, ids.end()}};
    c.Fill(tables[0], 0, len_a, rng);
    c.Fill(tables[1], 0, len_b, rng);
    c.UploadPool();
    const int n_head = heads * group, n = cs.prefill_a + cs.prefill_b;
    std::vector<int> pos, seq;
    for (int i = 0; i < cs.prefill_a; ++i) pos.push_back(cs.cached + i), seq.push_back(0);
    for (int i = 0; i < cs.prefill_b; ++i) pos.push_back(i), seq.push_back(1);
    // Token places with each sequence's table once (as the model writes them).
    std::vector<int32_t> first(n), all(tables[0].begin(), tables[0].end());
    all.insert(all.end(), tables[1].begin(), tables[1].end());
    for (int i = 0; i < n; ++i) first[i] = seq[i] == 0 ? 0 : pages_a;
    DeviceBuffer dpos = ToDevice(std::vector<int32_t>(pos.begin(), pos.end())), dfirst = ToDevice(first),
                 dtable = ToDevice(all);
    const TokenPlaces places{dpos.as<int32_t>(), dfirst.as<int32_t>(), dtable.as<int32_t>()};
    const std::vector<float> q = Gaussian(static_cast<size_t>(n) * n_head * dim, rng);
    DeviceBuffer dq = ToDevice(q);
    DeviceBuffer out = testing::Poisoned(q.size());
    DeviceBuffer scratch = ToDevice(std::vector<float>(CodedAttentionScratchFloats(n, n_head, heads, dim, false)));
    const float scale = 0.1f;
    const Status st = CodedAttention(dq.as<float>(), n_head, scale, c.dk.format(), c.dv.format(), c.Pages(), layer,
                                     places, n, 0, out.as<float>(), scratch.as<float>(), nullptr);
    ASSERT_TRUE(st.ok()) << st.ToString();
    const std::vector<float> got = FromDevice<float>(out, q.size());
    for (int i = 0; i < n; ++i) {
      for (int h = 0; h < heads; ++h) {
        const size_t at = (static_cast<size_t>(i) * n_head + h * group) * dim;
        const std::vector<float> want = c.Reference(tables[seq[i]], layer, h, pos[i] + 1, &q[at], group, scale);
        EXPECT_LT(RelError(&got[at], want.data(), want.size()), 1e-4)
            << format << " dim " << dim << " group " << group << " token " << i << " head " << h;
      }
    }
  }
}

// k sequences forked from one prompt of 5 pages, each with its own tail: shared-prefix attention equals
// per-sequence attention and the reference.
TEST_P(CudaKv, SharedPrefixEqualsPerSequence) {
  const std::string format = GetParam();
  for (int group : {1, 3, 4, 8}) {
    const int dim = 128, heads = 2, layers = 1, k_seq = 7, prompt = 5 * kPageTokens;
    std::mt19937 rng(group);
    const std::vector<int> tails = {1, 2, 31, 32, 33, 40, 70};
    int pages = 5;
    for (int t : tails) pages += (prompt + t + kPageTokens - 1) / kPageTokens - 5;
    TestCache c(format, format, layers, heads, dim, dim, pages, false, rng);
    std::vector<std::vector<int>> tables;
    const std::vector<int> shared = {4, 0, 3, 1, 2};
    std::vector<int> pos;
    c.FillForks(shared, prompt, tails, 5, rng, &tables, &pos);
    c.UploadPool();
    std::vector<std::span<const int>> spans_of_tables;
    std::vector<int> contexts;
    for (size_t s = 0; s < tables.size(); ++s) spans_of_tables.emplace_back(tables[s]), contexts.push_back(pos[s] + 1);
    const int shared_tokens = SharedPrefixTokens(spans_of_tables, contexts);
    EXPECT_EQ(shared_tokens, prompt);
    TestPlaces tp(pos, tables);
    const int n_head = heads * group, n = k_seq;
    const std::vector<float> q = Gaussian(static_cast<size_t>(n) * n_head * dim, rng);
    DeviceBuffer dq = ToDevice(q);
    DeviceBuffer a = testing::Poisoned(q.size()), b = testing::Poisoned(q.size());
    DeviceBuffer scratch = ToDevice(std::vector<float>(CodedAttentionScratchFloats(n, n_head, heads, dim, true)));
    const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
    ASSERT_TRUE(CodedAttention(dq.as<float>(), n_head, scale, c.dk.format(), c.dv.format(), c.Pages(), 0, tp.places, n,
                               shared_tokens, a.as<float>(), scratch.as<float>(), nullptr)
                    .ok());
    ASSERT_TRUE(CodedAttention(dq.as<float>(), n_head, scale, c.dk.format(), c.dv.format(), c.Pages(), 0, tp.places, n,
                               0, b.as<float>(), scratch.as<float>(), nullptr)
                    .ok());
    const std::vector<float> got = FromDevice<float>(a, q.size()), per_seq = FromDevice<float>(b, q.size());
    for (int i = 0; i < n; ++i) {
      for (int h = 0; h < heads; ++h) {
        const size_t at = (static_cast<size_t>(i) * n_head + h * group) * dim;
        EXPECT_LT(RelError(&got[at], &per_seq[at], static_cast<size_t>(group) * dim), 1e-5)
            << format << " group " << group << " seq " << i;
        const std::vector<float> want = c.Reference(tables[i], 0, h, pos[i] + 1, &q[at], group, scale);
        EXPECT_LT(RelError(&got[at], want.data(), want.size()), 1e-4) << format << " group " << group << " seq " << i;
      }
    }
  }
}

// Contexts long enough that every split of a decode step streams several pages through the kernel's page buffers:
// 3 sequences forked from a 6400-row prompt with tails of 5, 40 and 77 rows (calibrated, rotating key centers),
// attended per sequence and with the shared prefix, against the reference.
TEST_P(CudaKv, LongContextsMatchReference) {
  const std::string format = GetParam();
  const int dim = 128, group = 4, heads = 2, prompt_pages = 200, prompt = prompt_pages * kPageTokens;
  const std::vector<int> tails = {5, 40, 77};
  std::mt19937 rng(11);
  int pages = prompt_pages;
  for (int t : tails) pages += (t + kPageTokens - 1) / kPageTokens;
  TestCache c(format, format, 1, heads, dim, dim, pages, true, rng);
  std::vector<int> shared = ShuffledPages(prompt_pages, rng);
  std::vector<std::vector<int>> tables;
  std::vector<int> pos;
  c.FillForks(shared, prompt, tails, prompt_pages, rng, &tables, &pos);
  c.UploadPool();
  TestPlaces tp(pos, tables);
  const int n_head = heads * group, n = static_cast<int>(tails.size());
  const std::vector<float> q = Gaussian(static_cast<size_t>(n) * n_head * dim, rng);
  DeviceBuffer dq = ToDevice(q);
  DeviceBuffer scratch = ToDevice(std::vector<float>(CodedAttentionScratchFloats(n, n_head, heads, dim, true)));
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  for (int shared_tokens : {0, prompt}) {
    DeviceBuffer out = testing::Poisoned(q.size());
    const Status st = CodedAttention(dq.as<float>(), n_head, scale, c.dk.format(), c.dv.format(), c.Pages(), 0,
                                     tp.places, n, shared_tokens, out.as<float>(), scratch.as<float>(), nullptr);
    ASSERT_TRUE(st.ok()) << st.ToString();
    const std::vector<float> got = FromDevice<float>(out, q.size());
    for (int i = 0; i < n; ++i) {
      for (int h = 0; h < heads; ++h) {
        const size_t at = (static_cast<size_t>(i) * n_head + h * group) * dim;
        const std::vector<float> want = c.Reference(tables[i], 0, h, pos[i] + 1, &q[at], group, scale);
        EXPECT_LT(RelError(&got[at], want.data(), want.size()), 1e-4)
            << format << " shared " << shared_tokens << " seq " << i << " head " << h;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, CudaKv, ::testing::ValuesIn(AllFormats()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

TEST(CudaKvHost, SharedPrefixTokens) {
  const std::vector<int> a = {3, 1, 4, 1, 5}, b = {3, 1, 4, 9}, c = {3, 1, 7};
  std::vector<std::span<const int>> t = {a, b};
  EXPECT_EQ(SharedPrefixTokens(t, std::vector<int>{150, 120}), 3 * kPageTokens);
  EXPECT_EQ(SharedPrefixTokens(t, std::vector<int>{150, 80}), 2 * kPageTokens);  // capped by a context, whole pages
  t.push_back(c);
  EXPECT_EQ(SharedPrefixTokens(t, std::vector<int>{150, 120, 90}), 2 * kPageTokens);
  EXPECT_EQ(SharedPrefixTokens(std::vector<std::span<const int>>{a}, std::vector<int>{150}), 0);
}

}  // namespace
}  // namespace lr::cuda
