// The shape of a model's KV rows: what a KvCache (inference/kv_cache.h) and a KvCalibration
// (inference/kv_calibration.h) are sized by.
#pragma once

namespace lr::inference {

// From the model (Model::kv_shape fills it from its config).
struct KvShape {
  int n_layer = 0;
  int n_head_kv = 0;
  int k_dim = 0;  // values per key row
  int v_dim = 0;  // values per value row; 0: no value rows (MLA, whose values are part of the key row)
};

}  // namespace lr::inference
