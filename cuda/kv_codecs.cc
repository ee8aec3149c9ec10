// Host side of the device KV codecs (cuda/kv_codec.h, kv_attention.h): what the device needs of kvquant's codecs,
// and the shared prefix of a step's page tables.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/device.h"
#include "cuda/kv_attention.h"
#include "cuda/kv_codec.h"
#include "kvquant/kvquant.h"

namespace lr::cuda {

static_assert(static_cast<int>(kvquant::ScaleRule::kNone) == 0 && static_cast<int>(kvquant::ScaleRule::kMaxQ8) == 1 &&
                  static_cast<int>(kvquant::ScaleRule::kMaxQ4) == 2 &&
                  static_cast<int>(kvquant::ScaleRule::kLeastSquares) == 3 &&
                  static_cast<int>(kvquant::ScaleRule::kSelfDot) == 4 &&
                  static_cast<int>(kvquant::ScaleRule::kNorm) == 5,
              "kv_codec.cu numbers the scale rules as kvquant::ScaleRule");

Result<DeviceCodecs> DeviceCodecs::Upload(const std::vector<const kvquant::RowCodec*>& codecs, int n_head_kv,
                                          bool values) {
  if (codecs.empty() || n_head_kv <= 0 || codecs.size() % n_head_kv != 0)
    return InvalidArgument("DeviceCodecs: expected n_layer x n_head_kv codecs");
  const kvquant::RowCodec& c0 = *codecs[0];
  const std::string name(c0.format().name);
  if (c0.dim() > kMaxCodedDim)
    return Unsupported("CUDA KV format " + name + ": rows of " + std::to_string(c0.dim()) + " values (at most " +
                       std::to_string(kMaxCodedDim) + ")");
  DeviceCodecs out;
  DeviceRowFormat& f = out.format_;
  f.dim = c0.dim();
  f.row_bytes = static_cast<int>(c0.row_bytes());
  f.scale_rule = static_cast<int>(c0.scale_rule());
  f.rotation = static_cast<int>(c0.rotation().kind());
  f.n_head_kv = n_head_kv;
  if (!c0.is_f16()) {
    const kvquant::BlockLayout& b = c0.blocks()[0];
    f.block_elems = c0.format().block_elems;
    f.block_bytes = c0.format().block_bytes;
    f.n_runs = b.n_runs;
    for (int r = 0; r < b.n_runs; ++r) {
      f.bits[r] = b.runs[r].bits;
      // The first block is a full one unless the row is one short block: the full block's counts are the format's.
      f.count[r] = b.runs[r].count;
      if (b.runs[r].bits <= 4)
        for (int c = 0; c < 16; ++c) f.levels[r][c] = b.runs[r].levels[c];
    }
    if (b.size < f.block_elems) {  // one short block: restore the full block's counts (kvquant's format table)
      if (f.n_runs == 1) {
        f.count[0] = f.block_elems;
      } else {
        f.count[0] = f.block_elems * 3 / 8;  // hx3: 48 of 128 four-bit codes
        f.count[1] = f.block_elems - f.count[0];
      }
    }
  }
  f.param_stride = static_cast<int>(c0.rotation().params().size());
  std::vector<float> params, center, weights, rotating;
  bool any_center = false, any_weights = false;
  for (const kvquant::RowCodec* c : codecs) {
    if (c->format().name != c0.format().name || c->dim() != c0.dim())
      return InvalidArgument("DeviceCodecs: codecs of one kind must share format and dim");
    if (values && !c->rotating_center().empty())
      return Unsupported("CUDA KV format " + name + ": rotating centers on value rows are not supported");
    f.n_rotating = std::max(f.n_rotating, static_cast<int>(c->rotating_center().size()));
    any_center |= !c->center().empty();
    any_weights |= !c->weights().empty();
  }
  for (const kvquant::RowCodec* c : codecs) {
    for (int i = 0; i < f.n_rotating; ++i) {
      const std::span<const kvquant::RotatingCenter> rc = c->rotating_center();
      const kvquant::RotatingCenter r =
          i < static_cast<int>(rc.size()) ? rc[i] : kvquant::RotatingCenter{0, 0, 0, 0, 0};
      rotating.insert(rotating.end(), {static_cast<float>(r.a), static_cast<float>(r.b), r.theta, r.ca, r.cb});
    }
    const std::vector<float>& p = c->rotation().params();
    params.insert(params.end(), p.begin(), p.end());
    if (any_center) {
      if (c->center().empty()) {
        center.insert(center.end(), c->dim(), 0.0f);
      } else {
        center.insert(center.end(), c->center().begin(), c->center().end());
      }
    }
    if (any_weights) {
      if (c->weights().empty()) {
        weights.insert(weights.end(), c->dim(), 1.0f);
      } else {
        weights.insert(weights.end(), c->weights().begin(), c->weights().end());
      }
    }
  }
  auto upload = [](const std::vector<float>& v, DeviceBuffer* b, const float** at) -> Status {
    if (v.empty()) return Status::Ok();
    LR_ASSIGN_OR_RETURN(*b, DeviceBuffer::Allocate(v.size() * sizeof(float), "KV codec parameters"));
    LR_RETURN_IF_ERROR(b->Upload(v.data(), v.size() * sizeof(float)));
    *at = b->as<float>();
    return Status::Ok();
  };
  LR_RETURN_IF_ERROR(upload(params, &out.params_, &f.params));
  LR_RETURN_IF_ERROR(upload(center, &out.center_, &f.center));
  LR_RETURN_IF_ERROR(upload(weights, &out.weights_, &f.weights));
  LR_RETURN_IF_ERROR(upload(rotating, &out.rotating_, &f.rotating));
  return out;
}

Status VerifyEncoder(const DeviceCodecs& device, const std::vector<const kvquant::RowCodec*>& codecs, bool values) {
  const DeviceRowFormat& f = device.format();
  const int heads = f.n_head_kv, dim = f.dim, n = kPageTokens;
  std::vector<float> rows(static_cast<size_t>(n) * heads * dim);
  uint64_t state = 0x9e3779b97f4a7c15ull;  // a fixed pseudo-random row set (xorshift), values about N(0, 1)
  for (float& x : rows) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    x = static_cast<float>(static_cast<int64_t>(state >> 11) % 4001 - 2000) / 700.0f;
  }
  KvPages pages;
  pages.n_layer = 1;
  pages.n_head_kv = heads;
  pages.k_row_bytes = pages.v_row_bytes = f.row_bytes;
  pages.page_bytes = static_cast<size_t>(kPageTokens) * heads * 2 * f.row_bytes;
  std::vector<int32_t> pos(n), first(n, 0), table = {0};
  for (int i = 0; i < n; ++i) pos[i] = i;
  LR_ASSIGN_OR_RETURN(DeviceBuffer pool, DeviceBuffer::Allocate(pages.page_bytes, "the KV encoder check"));
  LR_ASSIGN_OR_RETURN(DeviceBuffer d_rows, DeviceBuffer::Allocate(rows.size() * 4, "the KV encoder check"));
  LR_ASSIGN_OR_RETURN(DeviceBuffer d_places, DeviceBuffer::Allocate((2 * n + 1) * 4, "the KV encoder check"));
  LR_RETURN_IF_ERROR(d_rows.Upload(rows.data(), rows.size() * 4));
  LR_RETURN_IF_ERROR(d_places.Upload(pos.data(), n * 4));
  LR_RETURN_IF_ERROR(d_places.Upload(first.data(), n * 4, n * 4));
  LR_RETURN_IF_ERROR(d_places.Upload(table.data(), 4, 2 * n * 4));
  pages.base = pool.as<uint8_t>();
  const int32_t* p = d_places.as<int32_t>();
  LR_RETURN_IF_ERROR(
      EncodeKvRows(f, values, d_rows.as<float>(), pages, 0, TokenPlaces{p, p + n, p + 2 * n}, n, nullptr));
  LR_RETURN_IF_ERROR(Synchronize("the KV encoder check"));
  std::vector<uint8_t> got(pages.page_bytes), want(f.row_bytes);
  LR_RETURN_IF_ERROR(pool.Download(got.data(), got.size()));
  const size_t base = values ? static_cast<size_t>(heads) * kPageTokens * f.row_bytes : 0;
  for (int h = 0; h < heads; ++h) {
    for (int i = 0; i < n; ++i) {
      codecs[h]->EncodeRow(&rows[(static_cast<size_t>(i) * heads + h) * dim], want.data(), i);
      const uint8_t* at = got.data() + base + (static_cast<size_t>(h) * kPageTokens + i) * f.row_bytes;
      if (std::memcmp(at, want.data(), want.size()) != 0)
        return Internal("the CUDA KV encoder disagrees with the CPU's (" + std::string(codecs[h]->format().name) +
                        (values ? " values" : " keys") + ", head " + std::to_string(h) + ", row " + std::to_string(i) +
                        "); use --device cpu for this format");
    }
  }
  return Status::Ok();
}

int SharedPrefixTokens(std::span<const std::span<const int>> tables, std::span<const int> contexts) {
  if (tables.size() < 2) return 0;
  size_t common = tables[0].size();
  for (const auto& t : tables) {
    size_t j = 0;
    while (j < common && j < t.size() && t[j] == tables[0][j]) ++j;
    common = j;
  }
  int tokens = static_cast<int>(common) * kPageTokens;
  for (int c : contexts) tokens = std::min(tokens, c);
  return tokens / kPageTokens * kPageTokens;
}

}  // namespace lr::cuda
