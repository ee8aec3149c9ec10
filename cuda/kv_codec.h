// Compressed KV rows on the device: kvquant's formats (kvquant/kvquant.h) in inference::KvCache's page layout.
//
// A page holds kPageTokens positions of every layer and KV head: for each (layer, head) 32 key rows of k_row_bytes,
// then for each (layer, head) 32 value rows of v_row_bytes (KvCache::KOffset / VOffset), so the host keeps all the
// page bookkeeping and the device only writes and reads rows. Row bytes are kvquant's (RowCodec::row_bytes()).
//
// DeviceCodecs holds, for keys or for values, what the device needs of every (layer, head)'s RowCodec: the format's
// block layout and Lloyd-Max levels, each head's rotation parameters (Rotation::params()), and the calibration's
// centers and channel weights. EncodeKvRows is RowCodec::EncodeRow on the device, bit for bit: the same operations
// in the same order (the file is compiled without contracting multiply-adds, as the CPU's scalar encoder is), the
// scale search in double as on the CPU; tests/cuda/kv_test.cc compares the bytes. A rotating center's cos and sin are
// the device's double-precision ones, within an ulp of the CPU's; the float they round to is the same but for
// arguments within an ulp of a rounding boundary of the float.
//
// Attention on these rows is cuda/kv_attention.h. This header is C++17 (the .cu files'); DeviceCodecs::Upload is
// host code (kv_codecs.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/status.h"
#include "cuda/device.h"
#include "cuda/kernels.h"

namespace lr::kvquant {
class RowCodec;
}

namespace lr::cuda {

// One format's rows of keys or values, for every (layer, KV head): passed to the kernels by value.
struct DeviceRowFormat {
  int dim = 0;
  int row_bytes = 0;
  int block_elems = 1;  // elements per full block; 1: f16 (no blocks)
  int block_bytes = 2;  // bytes per full block, its f16 scale included
  int scale_rule = 0;   // kvquant::ScaleRule's value (kv_codecs.cc checks the numbering)
  int rotation = 0;     // kvquant::RotationKind
  int n_runs = 0;
  int bits[2] = {0, 0};           // 2, 3, 4 or 8
  int count[2] = {0, 0};          // codes of each run in a full block (a short last block: kvquant's rule)
  float levels[2][16] = {};       // each run's levels (bits <= 4); 8-bit codes are int8 levels
  const float* params = nullptr;  // device: param_stride floats per (layer, head): Rotation::params()
  int param_stride = 0;
  const float* center = nullptr;   // device: dim floats per (layer, head), or null
  const float* weights = nullptr;  // device: dim floats per (layer, head), or null
  // Rotating key centers (kvquant::RotatingCenter): n_rotating pairs per (layer, head), 5 floats each (a, b, theta,
  // ca, cb); heads with fewer pairs are padded with zero pairs (ca = cb = 0: nothing to subtract or add back).
  const float* rotating = nullptr;
  int n_rotating = 0;
  int n_head_kv = 0;
};

// The rows' largest dim the device codecs and attention take.
constexpr int kMaxCodedDim = 256;

class DeviceCodecs {
 public:
  DeviceCodecs() = default;
  // codecs[layer * n_head_kv + head], every one of the same format and dim. kUnsupported for a dim over
  // kMaxCodedDim or a rotating center on value rows (attention adds them back for keys only); kInvalidArgument for
  // mixed formats or dims.
  static Result<DeviceCodecs> Upload(const std::vector<const kvquant::RowCodec*>& codecs, int n_head_kv, bool values);
  const DeviceRowFormat& format() const { return format_; }

 private:
  DeviceRowFormat format_;
  DeviceBuffer params_, center_, weights_, rotating_;
};

// Where the rows live: a pool of pages in KvCache's layout.
struct KvPages {
  uint8_t* base = nullptr;  // device: page p at base + p * page_bytes
  size_t page_bytes = 0;
  int n_layer = 0, n_head_kv = 0;
  int k_row_bytes = 0, v_row_bytes = 0;
};

// Encodes n tokens' rows of `layer` (rows: device, n x n_head_kv x f.dim floats) with f into each token's page slot
// (places: its position and page table), as keys (values = false) or values.
Status EncodeKvRows(const DeviceRowFormat& f, bool values, const float* rows, const KvPages& pages, int layer,
                    const TokenPlaces& places, int n, Stream stream);

// The same for n tokens' key rows (k_rows, with k) and value rows (v_rows, with v) in one launch (a decode step's
// rows are few: the two formats' rows encoded side by side instead of one after the other).
Status EncodeKvRows(const DeviceRowFormat& k, const float* k_rows, const DeviceRowFormat& v, const float* v_rows,
                    const KvPages& pages, int layer, const TokenPlaces& places, int n, Stream stream);

// Encodes kPageTokens random rows of every head of layer 0 with EncodeKvRows (codecs: as given to Upload) and
// compares them with RowCodec::EncodeRow's bytes: kInternal naming the format, head and row where they differ. A cache
// checks its codecs once, so that a device whose encoder disagrees with the CPU's fails instead of storing other
// rows.
Status VerifyEncoder(const DeviceCodecs& device, const std::vector<const kvquant::RowCodec*>& codecs, bool values);

}  // namespace lr::cuda
