// Draws a Session on the terminal with ncursesw, and reads keys.
//
// Layout (two columns when the terminal is at least 100 columns wide, stacked otherwise):
//   title     file, theorem under the cursor, k and turns
//   source    the file around the cursor, the theorem under the cursor marked in the gutter
//   goals     Lean's goals and messages for that theorem (from the last check of the buffer)
//   attempts  one line per candidate (state, turn, tokens), then the selected one's streamed text, or its diff
//   message   the last note, or the command line while one is typed
//   status    model, KV formats, tokens/s, KV memory and shared share, Lean's state
// Text is UTF-8 and drawn by display width (Lean's ℕ, ⊢, →, wide CJK), so columns line up. Colours where the terminal
// has them; otherwise bold, reverse and underline carry the same distinctions.
//
// Screen owns the terminal: Open puts it in raw mode (Ctrl-C arrives as a key), the destructor restores it.
// RestoreTerminal is for the paths that skip destructors (fatal signals).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "tui/session.h"

namespace lr::tui {

class Screen {
 public:
  // kUnavailable when stdin/stdout is not a terminal or curses cannot start on it.
  static Result<std::unique_ptr<Screen>> Open();
  ~Screen();
  Screen(const Screen&) = delete;
  Screen& operator=(const Screen&) = delete;

  void Draw(const Session& session);

  // Waits up to `timeout_ms` for a key. Nothing on timeout; a resize is handled here (the next Draw uses the new size)
  // and returns nothing.
  std::optional<Key> ReadKey(int timeout_ms);

 private:
  Screen() = default;
  bool color_ = false;
};

// Ends curses mode if it is active. Safe to call more than once.
void RestoreTerminal();

// Display columns of `text` (UTF-8): 2 for wide characters, 0 for combining marks.
int DisplayWidth(std::string_view text);

// `text` cut into lines of at most `width` display columns, at '\n' and wherever a line is full. Tabs count as two
// spaces.
std::vector<std::string> WrapText(std::string_view text, int width);

}  // namespace lr::tui
