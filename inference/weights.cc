#include "inference/weights.h"

namespace lr::inference {

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Result<ops::WeightMatrix> BindMatrix(const GgufFile& g, const std::string& name, int64_t rows, int64_t cols) {
  LR_ASSIGN_OR_RETURN(const GgufFile::Tensor* t, g.FindTensor(name));
  if (t->shape != std::vector<int64_t>{cols, rows})
    return Corrupt(g.path() + ": tensor " + name + " has shape " + ShapeText(t->shape) + ", expected [" +
                   std::to_string(cols) + ", " + std::to_string(rows) + "]");
  return ops::WeightMatrix{t->type, t->data, rows, cols, ops::RowBytes(t->type, cols)};
}

Result<std::vector<float>> BindVector(const GgufFile& g, const std::string& name, int64_t n) {
  LR_ASSIGN_OR_RETURN(const GgufFile::Tensor* t, g.FindTensor(name));
  if (t->shape != std::vector<int64_t>{n})
    return Corrupt(g.path() + ": tensor " + name + " has shape " + ShapeText(t->shape) + ", expected [" +
                   std::to_string(n) + "]");
  std::vector<float> out(static_cast<size_t>(n));
  ops::DequantizeRow(t->type, t->data, out.data(), n);
  return out;
}

Result<ops::WeightMatrix> BindStacked(const GgufFile& g, const std::string& name, int64_t count, int64_t rows,
                                      int64_t cols) {
  LR_ASSIGN_OR_RETURN(const GgufFile::Tensor* t, g.FindTensor(name));
  if (t->shape != std::vector<int64_t>{cols, rows, count})
    return Corrupt(g.path() + ": tensor " + name + " has shape " + ShapeText(t->shape) + ", expected [" +
                   std::to_string(cols) + ", " + std::to_string(rows) + ", " + std::to_string(count) + "]");
  return ops::WeightMatrix{t->type, t->data, count * rows, cols, ops::RowBytes(t->type, cols)};
}

}  // namespace lr::inference
