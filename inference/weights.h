// The runner's views of GGUF tensors: each checked for the shape the model needs (ggml order: columns first), with
// kCorrupt naming the file, the tensor, its shape and the expected one. Matrices stay in the mapped file; vectors
// (norm weights, biases) are decoded to floats.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "inference/gguf.h"
#include "ops/kernels.h"

namespace lr::inference {

// "[a, b, ...]", for messages.
std::string ShapeText(const std::vector<int64_t>& shape);

// A 2D tensor of `rows` rows of `cols` values.
Result<ops::WeightMatrix> BindMatrix(const GgufFile& gguf, const std::string& name, int64_t rows, int64_t cols);
// A 3D tensor of `count` stacked matrices of rows x cols, as one matrix of count * rows rows.
Result<ops::WeightMatrix> BindStacked(const GgufFile& gguf, const std::string& name, int64_t count, int64_t rows,
                                      int64_t cols);
// A 1D tensor of n values, decoded.
Result<std::vector<float>> BindVector(const GgufFile& gguf, const std::string& name, int64_t n);

}  // namespace lr::inference
