#include "net/http_sse.h"

namespace lr::net {

Status SseParser::Feed(std::string_view bytes, const EventFn& on_event) {
  for (char c : bytes) {
    if (c == '\n' && after_cr_) {
      after_cr_ = false;
      continue;
    }
    after_cr_ = (c == '\r');
    if (c == '\r' || c == '\n') {
      LR_RETURN_IF_ERROR(EndLine(on_event));
    } else {
      line_.push_back(c);
    }
  }
  return Status::Ok();
}

Status SseParser::Finish(const EventFn& on_event) {
  if (!line_.empty()) LR_RETURN_IF_ERROR(EndLine(on_event));
  if (!has_data_) return Status::Ok();
  return Dispatch(on_event);
}

Status SseParser::Dispatch(const EventFn& on_event) {
  has_data_ = false;
  std::string data = std::move(data_);
  data_.clear();
  return on_event(data);
}

Status SseParser::EndLine(const EventFn& on_event) {
  std::string line = std::move(line_);
  line_.clear();
  if (line.empty()) {  // blank line: dispatch
    return has_data_ ? Dispatch(on_event) : Status::Ok();
  }
  if (line[0] == ':') return Status::Ok();  // comment (keep-alive)
  size_t colon = line.find(':');
  std::string_view field = std::string_view(line).substr(0, colon);
  if (field != "data") return Status::Ok();
  std::string_view value;
  if (colon != std::string::npos) {
    value = std::string_view(line).substr(colon + 1);
    if (!value.empty() && value[0] == ' ') value.remove_prefix(1);
  }
  if (has_data_) data_.push_back('\n');
  data_.append(value);
  has_data_ = true;
  return Status::Ok();
}

}  // namespace lr::net
