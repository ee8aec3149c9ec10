// kvquant_bench --gpu: attention on compressed rows on the CUDA device (cuda/kv_attention.h), one layer of a 7B-like
// shape (8 KV heads, 4 queries per KV head, head dim 128), rows encoded on the device into KvCache's pages.
//   decode:  one token attending to R = 4K, 32K, 128K rows, per format, and the f16 rows through cuda::Attention (the
//            backend's f16 kernel) as the base of the ratios.
//   prefill: 512 tokens of one sequence attending to their prefixes (the last 512 of R = 4K and 32K rows).
//   encode:  EncodeKvRows of one layer's keys and values for 1, 16 and 512 tokens (the encoder's share of a step).
//   shared:  a decode step of k = 16 sequences forked from a 32K prompt, each with 64 rows of its own: the prompt's
//            pages read once per 16 queries (shared) or once per sequence.
// Times are the mean over repeated launches (wall clock around a synchronized loop, so launch gaps count as in a
// step that is not captured in a graph); each line also gives the KV bytes one launch reads.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/kv_attention.h"
#include "cuda/kv_codec.h"
#include "kvquant/kvquant.h"

namespace {

using namespace lr::cuda;  // NOLINT: a benchmark of this one module

constexpr int kHeadsKv = 8, kGroup = 4, kDim = 128, kHeads = kHeadsKv * kGroup;

void Check(const lr::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "kvquant_bench --gpu: %s: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}
template <typename T>
T Take(lr::Result<T> r, const char* what) {
  Check(r.status(), what);
  return std::move(r).value();
}

DeviceBuffer Upload(const void* data, size_t bytes, const char* what) {
  DeviceBuffer b = Take(DeviceBuffer::Allocate(std::max<size_t>(bytes, 4), what), what);
  if (bytes > 0) Check(b.Upload(data, bytes), what);
  return b;
}

// One format's codecs of one layer, a pool of `pages` pages, and helpers to fill and attend.
struct Bench {
  DeviceCodecs k, v;
  DeviceBuffer pool;
  KvPages pages;

  Bench(const std::string& format, int n_pages) {
    std::vector<lr::kvquant::RowCodec> kc, vc;
    std::vector<const lr::kvquant::RowCodec*> kp, vp;
    for (int h = 0; h < kHeadsKv; ++h) {
      kc.push_back(Take(lr::kvquant::RowCodec::Create(format, kDim, 1, 0, h), "codec"));
      vc.push_back(Take(lr::kvquant::RowCodec::Create(format, kDim, 2, 0, h), "codec"));
    }
    for (int h = 0; h < kHeadsKv; ++h) kp.push_back(&kc[h]), vp.push_back(&vc[h]);
    k = Take(DeviceCodecs::Upload(kp, kHeadsKv, false), "upload codecs");
    v = Take(DeviceCodecs::Upload(vp, kHeadsKv, true), "upload codecs");
    pages.n_layer = 1;
    pages.n_head_kv = kHeadsKv;
    pages.k_row_bytes = static_cast<int>(kc[0].row_bytes());
    pages.v_row_bytes = static_cast<int>(vc[0].row_bytes());
    pages.page_bytes = static_cast<size_t>(kPageTokens) * kHeadsKv * (pages.k_row_bytes + pages.v_row_bytes);
    pool = Take(DeviceBuffer::Allocate(pages.page_bytes * n_pages, "KV pool"), "pool");
    pages.base = pool.as<uint8_t>();
  }
  size_t RowBytes() const { return static_cast<size_t>(pages.k_row_bytes + pages.v_row_bytes) * kHeadsKv; }
};

// Device places: token i at pos[i] with page table tables[i], or every token with tables[0] when there is one.
struct Places {
  DeviceBuffer pos, first, table;
  TokenPlaces places;
  Places(const std::vector<int>& p, const std::vector<std::vector<int>>& tables) {
    std::vector<int32_t> f, all;
    for (const auto& t : tables) {
      f.push_back(static_cast<int32_t>(all.size()));
      all.insert(all.end(), t.begin(), t.end());
    }
    f.resize(p.size(), 0);
    pos = Upload(p.data(), p.size() * 4, "positions");
    first = Upload(f.data(), f.size() * 4, "firsts");
    table = Upload(all.data(), all.size() * 4, "page tables");
    places = TokenPlaces{pos.as<int32_t>(), first.as<int32_t>(), table.as<int32_t>()};
  }
};

// Encodes random rows into positions [0, n_rows) of the sequence with page table `table`.
void Fill(Bench& b, const std::vector<int>& table, int n_rows, const DeviceBuffer& rows, int chunk) {
  for (int at = 0; at < n_rows; at += chunk) {
    const int n = std::min(chunk, n_rows - at);
    std::vector<int> pos(n);
    for (int i = 0; i < n; ++i) pos[i] = at + i;
    Places pl(pos, {table});
    Check(EncodeKvRows(b.k.format(), false, rows.as<float>(), b.pages, 0, pl.places, n, nullptr), "encode");
    Check(EncodeKvRows(b.v.format(), true, rows.as<float>(), b.pages, 0, pl.places, n, nullptr), "encode");
  }
  Check(Synchronize("fill"), "fill");
}

// Mean microseconds per call of f over at least 20 ms (after a warm-up call).
template <typename F>
double TimeUs(F&& f) {
  f();
  Check(Synchronize("warm-up"), "warm-up");
  int iters = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double elapsed = 0;
  do {
    for (int i = 0; i < 10; ++i) f();
    iters += 10;
    Check(Synchronize("timing"), "timing");
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } while (elapsed < 0.02);
  return elapsed / iters * 1e6;
}

std::vector<int> Iota(int n, int from = 0) {
  std::vector<int> t(n);
  for (int i = 0; i < n; ++i) t[i] = from + i;
  return t;
}

}  // namespace

int RunGpuSection() {
  const lr::Result<DeviceInfo> info = QueryDevice();
  if (!info.ok()) {
    std::printf("kvquant_bench --gpu: %s\n", info.status().message().c_str());
    return 1;
  }
  std::printf("device: %s; one layer: %d KV heads x %d queries, head dim %d\n", info->name.c_str(), kHeadsKv, kGroup,
              kDim);
  std::vector<std::string> formats;
  for (const auto& f : lr::kvquant::ListFormats()) formats.emplace_back(f.name);
  const int chunk = 4096;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> host_rows(static_cast<size_t>(chunk) * kHeadsKv * kDim);
  for (float& x : host_rows) x = normal(rng);
  DeviceBuffer rows = Upload(host_rows.data(), host_rows.size() * 4, "rows");
  std::vector<float> host_q(static_cast<size_t>(512) * kHeads * kDim);
  for (float& x : host_q) x = normal(rng);
  DeviceBuffer q = Upload(host_q.data(), host_q.size() * 4, "queries");
  DeviceBuffer out = Take(DeviceBuffer::Allocate(host_q.size() * 4, "out"), "out");
  const size_t scratch_floats = std::max(CodedAttentionScratchFloats(512, kHeads, kHeadsKv, kDim, false),
                                         CodedAttentionScratchFloats(16, kHeads, kHeadsKv, kDim, true));
  DeviceBuffer scratch = Take(DeviceBuffer::Allocate(scratch_floats * 4, "scratch"), "scratch");
  const float scale = 0.088f;

  // Decode and prefill.
  const int sizes[] = {4096, 32768, 131072};
  std::map<std::string, std::map<int, double>> decode, prefill, encode;
  double f16_kernel[3] = {}, f16_prefill_kernel[3] = {}, f16_flash[3] = {};
  for (const std::string& f : formats) {
    for (int si = 0; si < 3; ++si) {
      const int r = sizes[si];
      Bench b(f, r / kPageTokens);
      const std::vector<int> table = Iota(r / kPageTokens);
      Fill(b, table, r, rows, chunk);
      Places one({r - 1}, {table});
      if (si == 0) {  // the encoder: a decode step's rows (1 and 16 tokens) and a prefill chunk's (512 tokens)
        for (int n : {1, 16, 512}) {
          Places at(Iota(n, r - n), {table});
          encode[f][n] = TimeUs([&] {
            Check(EncodeKvRows(b.k.format(), rows.as<float>(), b.v.format(), rows.as<float>(), b.pages, 0, at.places, n,
                               nullptr),
                  "encode");
          });
        }
      }
      decode[f][r] = TimeUs([&] {
        Check(CodedAttention(q.as<float>(), kHeads, scale, b.k.format(), b.v.format(), b.pages, 0, one.places, 1, 0,
                             out.as<float>(), scratch.as<float>(), nullptr),
              "attention");
      });
      if (f == "f16") {
        const KvPool pool{b.pages.base, b.pages.page_bytes, 1, kHeadsKv, kDim, kDim};
        f16_kernel[si] = TimeUs([&] {
          Check(Attention(q.as<float>(), kHeads, scale, pool, 0, one.places, 1, out.as<float>(), scratch.as<float>(),
                          nullptr),
                "f16 attention");
        });
      }
      if (r <= 32768) {
        std::vector<int> pos = Iota(512, r - 512);
        Places many(pos, {table});
        prefill[f][r] = TimeUs([&] {
          Check(CodedAttention(q.as<float>(), kHeads, scale, b.k.format(), b.v.format(), b.pages, 0, many.places, 512,
                               0, out.as<float>(), scratch.as<float>(), nullptr),
                "prefill attention");
        });
        if (f == "f16") {
          const KvPool pool{b.pages.base, b.pages.page_bytes, 1, kHeadsKv, kDim, kDim};
          f16_prefill_kernel[si] = TimeUs([&] {
            Check(Attention(q.as<float>(), kHeads, scale, pool, 0, many.places, 512, out.as<float>(), nullptr, nullptr),
                  "f16 prefill attention");
          });
          f16_flash[si] = TimeUs([&] {
            Check(FlashAttention(q.as<float>(), kHeads, scale, pool, 0, many.places, 512, out.as<float>(), nullptr),
                  "f16 flash attention");
          });
        }
      }
    }
  }
  std::printf("\ndecode attention, one token, one layer: microseconds (ratio to cuda::Attention on f16 rows)\n");
  std::printf("%-8s %6s %20s %20s %20s %12s\n", "format", "bits", "4K rows", "32K rows", "128K rows", "KV MiB@32K");
  std::printf("%-8s %6s %11.1f (1.00)    %11.1f (1.00)    %11.1f (1.00)  (cuda::Attention)\n", "f16*", "16",
              f16_kernel[0], f16_kernel[1], f16_kernel[2]);
  for (const std::string& f : formats) {
    const auto fi = *lr::kvquant::FindFormat(f);
    std::printf("%-8s %6.3f", f.c_str(), fi.bits_per_element);
    for (int si = 0; si < 3; ++si)
      std::printf(" %11.1f (%5.2f)   ", decode[f][sizes[si]], decode[f][sizes[si]] / f16_kernel[si]);
    std::printf(" %10.1f\n", 32768.0 * kHeadsKv * 2 * kDim * fi.bits_per_element / 8 / (1 << 20));
  }
  std::printf(
      "\nprefill attention, 512 tokens at the end of R rows, one layer: microseconds (ratio to cuda::Attention)\n");
  std::printf("%-8s %20s %20s\n", "format", "4K rows", "32K rows");
  std::printf("%-8s %11.1f (1.00)    %11.1f (1.00)  (cuda::Attention)\n", "f16*", f16_prefill_kernel[0],
              f16_prefill_kernel[1]);
  std::printf("%-8s %11.1f (%5.2f)    %11.1f (%5.2f)  (cuda::FlashAttention: tensor cores, f16 queries)\n", "f16fa",
              f16_flash[0], f16_flash[0] / f16_prefill_kernel[0], f16_flash[1], f16_flash[1] / f16_prefill_kernel[1]);
  for (const std::string& f : formats)
    std::printf("%-8s %11.1f (%5.2f)    %11.1f (%5.2f)\n", f.c_str(), prefill[f][4096],
                prefill[f][4096] / f16_prefill_kernel[0], prefill[f][32768], prefill[f][32768] / f16_prefill_kernel[1]);

  std::printf("\nencoder (EncodeKvRows, keys and values of one layer): microseconds per call\n");
  std::printf("%-8s %12s %12s %12s\n", "format", "1 token", "16 tokens", "512 tokens");
  for (const std::string& f : formats)
    std::printf("%-8s %12.1f %12.1f %12.1f\n", f.c_str(), encode[f][1], encode[f][16], encode[f][512]);

  // Shared prefix: k = 16 sequences forked from a 32K prompt, 64 own rows each.
  const int k_seq = 16, prompt = 32768, own = 64;
  const int prompt_pages = prompt / kPageTokens, own_pages = own / kPageTokens;
  std::printf("\nshared prefix: decode step of %d sequences forked from a %d-row prompt, %d own rows each, one layer\n",
              k_seq, prompt, own);
  std::printf("%-8s %14s %14s %10s\n", "format", "per-seq us", "shared us", "ratio");
  double f16_unshared = 0;
  for (const std::string& f : formats) {
    Bench b(f, prompt_pages + k_seq * own_pages);
    const std::vector<int> shared_table = Iota(prompt_pages);
    Fill(b, shared_table, prompt, rows, chunk);
    std::vector<std::vector<int>> tables;
    std::vector<int> pos;
    for (int s = 0; s < k_seq; ++s) {
      std::vector<int> t = shared_table;
      for (int p = 0; p < own_pages; ++p) t.push_back(prompt_pages + s * own_pages + p);
      tables.push_back(t);
      pos.push_back(prompt + own - 1);
    }
    // Own rows: encode the tail of each sequence (positions prompt .. prompt + own - 1).
    for (int s = 0; s < k_seq; ++s) {
      std::vector<int> tp = Iota(own, prompt);
      Places pl(tp, {tables[s]});
      Check(EncodeKvRows(b.k.format(), false, rows.as<float>(), b.pages, 0, pl.places, own, nullptr), "encode");
      Check(EncodeKvRows(b.v.format(), true, rows.as<float>(), b.pages, 0, pl.places, own, nullptr), "encode");
    }
    Places step(pos, tables);
    const double per_seq = TimeUs([&] {
      Check(CodedAttention(q.as<float>(), kHeads, scale, b.k.format(), b.v.format(), b.pages, 0, step.places, k_seq, 0,
                           out.as<float>(), scratch.as<float>(), nullptr),
            "attention");
    });
    const double shared = TimeUs([&] {
      Check(CodedAttention(q.as<float>(), kHeads, scale, b.k.format(), b.v.format(), b.pages, 0, step.places, k_seq,
                           prompt, out.as<float>(), scratch.as<float>(), nullptr),
            "shared attention");
    });
    if (f == "f16") {
      const KvPool pool{b.pages.base, b.pages.page_bytes, 1, kHeadsKv, kDim, kDim};
      f16_unshared = TimeUs([&] {
        Check(Attention(q.as<float>(), kHeads, scale, pool, 0, step.places, k_seq, out.as<float>(), scratch.as<float>(),
                        nullptr),
              "f16 attention");
      });
      std::printf("%-8s %14.1f %14s %10s  (cuda::Attention, no sharing: the base)\n", "f16*", f16_unshared, "-",
                  "1.00");
    }
    std::printf("%-8s %14.1f %14.1f   per-seq/f16* %5.2f  shared/f16* %5.2f\n", f.c_str(), per_seq, shared,
                per_seq / f16_unshared, shared / f16_unshared);
  }
  return 0;
}
