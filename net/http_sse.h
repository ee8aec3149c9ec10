// Server-sent events (text/event-stream), the framing OpenAI-compatible servers use for streamed completions.
//
// The parser is incremental: bytes arrive in arbitrary pieces from the network (an event, a line, even a CRLF pair may
// be split across reads), and each complete event's data is handed on as soon as its terminating blank line arrives.
// It follows the WHATWG event-stream rules that matter here: lines end in LF, CRLF or CR; lines starting with ':' are
// comments; "data:" fields (one optional space after the colon) of one event are joined with '\n'; other fields
// (event, id, retry) are ignored.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "base/status.h"

namespace lr::net {

class SseParser {
 public:
  // Receives the data of one complete event. A non-OK Status stops Feed and is returned from it.
  using EventFn = std::function<Status(std::string_view data)>;

  // Consumes `bytes`, calling `on_event` for every event completed by them.
  Status Feed(std::string_view bytes, const EventFn& on_event);

  // At end of stream: dispatches an event that was not followed by a blank line (some servers omit the last one).
  Status Finish(const EventFn& on_event);

 private:
  Status EndLine(const EventFn& on_event);
  Status Dispatch(const EventFn& on_event);

  std::string line_;       // the current, unfinished line
  std::string data_;       // data of the current event so far
  bool has_data_ = false;  // the current event has at least one data field
  bool after_cr_ = false;  // the last byte was CR: a following LF belongs to the same line end
};

}  // namespace lr::net
