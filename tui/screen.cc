#include "tui/screen.h"

#include <unistd.h>
#include <wchar.h>

#include <ncursesw/curses.h>
#include <algorithm>
#include <clocale>
#include <cstdio>
#include <cstdlib>

namespace lr::tui {
namespace {

bool g_curses_active = false;

// Decodes one UTF-8 code point at `*i` and advances past it; invalid bytes become U+FFFD.
char32_t NextCodePoint(std::string_view s, size_t* i) {
  const unsigned char c = static_cast<unsigned char>(s[*i]);
  int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || *i + len > s.size()) {
    ++*i;
    return 0xFFFD;
  }
  char32_t cp = len == 1 ? c : c & (0x7F >> len);
  for (int k = 1; k < len; ++k) {
    const unsigned char cc = static_cast<unsigned char>(s[*i + k]);
    if ((cc & 0xC0) != 0x80) {
      ++*i;
      return 0xFFFD;
    }
    cp = (cp << 6) | (cc & 0x3F);
  }
  *i += len;
  return cp;
}

// Display columns of one code point; control characters and unknown ones count as one ('?' is drawn).
int CodePointWidth(char32_t cp) {
  const int w = wcwidth(static_cast<wchar_t>(cp));
  return w < 0 ? 1 : w;
}

// What is drawn for one code point: tabs as two spaces, control characters as '?'.
std::wstring Glyph(char32_t cp) {
  if (cp == '\t') return L"  ";
  if (wcwidth(static_cast<wchar_t>(cp)) < 0) return L"?";
  return std::wstring(1, static_cast<wchar_t>(cp));
}

// The visual roles, mapped to colour pairs or to monochrome attributes.
enum Role {
  kTitle = 1,
  kCursorLine,
  kGutterMark,
  kError,
  kWarning,
  kInfo,
  kAccepted,
  kGenerating,
  kChecking,
  kFailed,
  kDiffAdd,
  kDiffDel,
  kStatusBar,
  kBoxTitle,
  kRoleCount,
};

attr_t Attr(bool color, Role role) {
  if (color) {
    attr_t extra = (role == kTitle || role == kBoxTitle || role == kAccepted) ? A_BOLD : A_NORMAL;
    return COLOR_PAIR(role) | extra;
  }
  switch (role) {
    case kTitle:
    case kStatusBar:
    case kCursorLine: return A_REVERSE;
    case kError:
    case kAccepted:
    case kBoxTitle:
    case kGutterMark: return A_BOLD;
    case kDiffAdd: return A_BOLD;
    case kDiffDel: return A_UNDERLINE;
    case kWarning:
    case kChecking: return A_UNDERLINE;
    case kFailed:
    case kInfo: return A_DIM;
    default: return A_NORMAL;
  }
}

void InitColors() {
  start_color();
  use_default_colors();
  init_pair(kTitle, COLOR_BLACK, COLOR_CYAN);
  init_pair(kCursorLine, COLOR_BLACK, COLOR_WHITE);
  init_pair(kGutterMark, COLOR_CYAN, -1);
  init_pair(kError, COLOR_RED, -1);
  init_pair(kWarning, COLOR_YELLOW, -1);
  init_pair(kInfo, COLOR_BLUE, -1);
  init_pair(kAccepted, COLOR_GREEN, -1);
  init_pair(kGenerating, COLOR_CYAN, -1);
  init_pair(kChecking, COLOR_YELLOW, -1);
  init_pair(kFailed, COLOR_RED, -1);
  init_pair(kDiffAdd, COLOR_GREEN, -1);
  init_pair(kDiffDel, COLOR_RED, -1);
  init_pair(kStatusBar, COLOR_BLACK, COLOR_WHITE);
  init_pair(kBoxTitle, COLOR_CYAN, -1);
}

// Draws `text` at (y, x), clipped to `width` columns; with `fill`, pads the rest of the width with spaces.
void Put(int y, int x, int width, std::string_view text, attr_t attr, bool fill = false) {
  if (width <= 0) return;
  std::wstring out;
  int used = 0;
  for (size_t i = 0; i < text.size();) {
    const char32_t cp = NextCodePoint(text, &i);
    if (cp == '\n') break;
    const int w = cp == '\t' ? 2 : CodePointWidth(cp);
    if (used + w > width) break;
    out += Glyph(cp);
    used += w;
  }
  if (fill) out.append(width - used, L' ');
  attr_set(attr, 0, nullptr);
  mvaddnwstr(y, x, out.c_str(), static_cast<int>(out.size()));
  attr_set(A_NORMAL, 0, nullptr);
}

struct Box {
  int y, x, h, w;
};

// A titled frame; returns the inner area.
Box Frame(const Box& b, std::string_view title, bool color) {
  attr_set(A_NORMAL, 0, nullptr);
  mvhline(b.y, b.x + 1, ACS_HLINE, b.w - 2);
  mvhline(b.y + b.h - 1, b.x + 1, ACS_HLINE, b.w - 2);
  mvvline(b.y + 1, b.x, ACS_VLINE, b.h - 2);
  mvvline(b.y + 1, b.x + b.w - 1, ACS_VLINE, b.h - 2);
  mvaddch(b.y, b.x, ACS_ULCORNER);
  mvaddch(b.y, b.x + b.w - 1, ACS_URCORNER);
  mvaddch(b.y + b.h - 1, b.x, ACS_LLCORNER);
  mvaddch(b.y + b.h - 1, b.x + b.w - 1, ACS_LRCORNER);
  std::string label(1, ' ');
  label.append(title).push_back(' ');
  Put(b.y, b.x + 2, b.w - 4, label, Attr(color, kBoxTitle));
  return {b.y + 1, b.x + 1, b.h - 2, b.w - 2};
}

std::string Format(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

std::string Bytes(double b) {
  if (b >= 1 << 30) return Format("%.1f GiB", b / (1 << 30));
  if (b >= 1 << 20) return Format("%.1f MiB", b / (1 << 20));
  return Format("%.0f KiB", b / 1024);
}

Role StateRole(AttemptState s) {
  switch (s) {
    case AttemptState::kWaiting: return kInfo;
    case AttemptState::kGenerating: return kGenerating;
    case AttemptState::kChecking: return kChecking;
    case AttemptState::kAccepted: return kAccepted;
    case AttemptState::kFailed: return kFailed;
    case AttemptState::kCancelled:
    case AttemptState::kNotChecked: return kInfo;
  }
  return kInfo;
}

void DrawSource(const Session& s, const Box& box, bool color) {
  const int t = s.current_theorem();
  std::string title = s.path().empty() ? "[no file]" : s.path();
  if (s.dirty()) title += " [+]";
  const Box in = Frame(box, title, color);
  const int n = static_cast<int>(s.lines().size());
  const int gutter = std::max(3, static_cast<int>(std::to_string(n).size())) + 2;
  const int top = std::clamp(s.cursor() - in.h / 3, 0, std::max(0, n - in.h));
  const int first = t < 0 ? -1 : s.TheoremFirstLine(t), last = t < 0 ? -1 : s.TheoremLastLine(t);
  for (int row = 0; row < in.h && top + row < n; ++row) {
    const int line = top + row;
    const bool in_theorem = line >= first && line <= last;
    std::string num = std::to_string(line + 1);
    num.insert(0, std::max(0, gutter - 2 - static_cast<int>(num.size())), ' ');
    Put(in.y + row, in.x, gutter - 2, num, in_theorem ? Attr(color, kGutterMark) : Attr(color, kInfo));
    Put(in.y + row, in.x + gutter - 2, 2, in_theorem ? "│ " : "  ", Attr(color, kGutterMark));
    const attr_t attr = line == s.cursor() ? Attr(color, kCursorLine) : A_NORMAL;
    Put(in.y + row, in.x + gutter, in.w - gutter, s.lines()[line], attr, line == s.cursor());
  }
}

void DrawGoals(const Session& s, const Box& box, bool color) {
  std::string title = "Goals and messages";
  if (s.checking())
    title += " (checking...)";
  else if (s.have_report() && s.report_stale())
    title += " (stale)";
  const Box in = Frame(box, title, color);
  std::vector<std::pair<std::string, attr_t>> rows;
  auto add = [&](std::string_view text, attr_t attr) {
    for (std::string& l : WrapText(text, in.w)) rows.push_back({std::move(l), attr});
  };
  if (!s.check_error().empty())
    add("no Lean report: " + s.check_error(), Attr(color, kError));
  else if (!s.have_report())
    add(s.checking() ? "Lean is checking the file..." : "no Lean report yet", Attr(color, kInfo));
  for (const agent::LeanGoal& g : s.GoalsAtCursor()) {
    add("goals at line " + std::to_string(g.line + 1) + ":", Attr(color, kBoxTitle));
    add(g.goals, A_NORMAL);
  }
  for (const agent::LeanMessage& m : s.MessagesAtCursor()) {
    static const char* kNames[] = {"", "error", "warning", "info", "hint"};
    const Role role = m.severity == 1 ? kError : m.severity == 2 ? kWarning : kInfo;
    add("line " + std::to_string(m.line + 1) + " " + kNames[std::clamp(m.severity, 1, 4)] + ": " + m.text,
        Attr(color, role));
  }
  if (s.have_report() && rows.empty()) add("no goals or messages for this theorem", Attr(color, kInfo));
  for (int row = 0; row < in.h && row < static_cast<int>(rows.size()); ++row)
    Put(in.y + row, in.x, in.w, rows[row].first, rows[row].second);
}

void DrawAttempts(const Session& s, const Box& box, bool color) {
  const RunView& run = s.run();
  std::string title = "Attempts";
  if (!run.task.name.empty()) title += ": " + run.task.name + (run.running ? " (running, Esc cancels)" : "");
  const Box in = Frame(box, title, color);
  int row = 0;
  if (run.attempts.empty()) {
    Put(in.y, in.x, in.w, "Enter proves the theorem under the cursor; ? shows the keys", Attr(color, kInfo));
    return;
  }
  const int n = static_cast<int>(run.attempts.size());
  const int list_rows = std::min(n, std::max(1, in.h / 3));
  const int list_top = std::clamp(s.selected_attempt() - list_rows + 1, 0, std::max(0, n - list_rows));
  for (int i = list_top; i < list_top + list_rows; ++i, ++row) {
    const AttemptView& a = run.attempts[i];
    char head[96];
    std::snprintf(head, sizeof head, "%c%2d %-11s turn %d  %5d tok  ", i == s.selected_attempt() ? '>' : ' ', i + 1,
                  std::string(AttemptStateName(a.state)).c_str(), a.turn, a.shown_tokens());
    Put(in.y + row, in.x, in.w, head, Attr(color, StateRole(a.state)));
    const int used = DisplayWidth(head);
    const bool ended =
        a.state == AttemptState::kFailed || a.state == AttemptState::kCancelled || a.state == AttemptState::kNotChecked;
    Put(in.y + row, in.x + used, in.w - used, ended ? a.reason : "", Attr(color, kInfo));
  }
  if (!run.running && !run.outcome.empty() && row < in.h)
    Put(in.y + row++, in.x, in.w, "result: " + run.outcome, Attr(color, kBoxTitle));
  if (row >= in.h) return;
  mvhline(in.y + row++, in.x, ACS_HLINE, in.w);
  const AttemptView& a = run.attempts[s.selected_attempt()];
  std::vector<std::pair<std::string, attr_t>> rows;
  if (s.diff_visible()) {
    Put(in.y + row++, in.x, in.w,
        "diff of attempt " + std::to_string(s.selected_attempt() + 1) + " against the current proof (d closes)",
        Attr(color, kBoxTitle));
    for (const DiffLine& d : s.SelectedDiff()) {
      const attr_t attr = d.op == '+' ? Attr(color, kDiffAdd) : d.op == '-' ? Attr(color, kDiffDel) : A_NORMAL;
      for (std::string& l : WrapText(std::string(1, d.op) + " " + d.text, in.w)) rows.push_back({std::move(l), attr});
    }
  } else {
    for (std::string& l : WrapText(a.stream, in.w)) rows.push_back({std::move(l), A_NORMAL});
    if (a.state == AttemptState::kFailed && !a.reason.empty())
      for (std::string& l : WrapText("refused: " + a.reason, in.w)) rows.push_back({std::move(l), Attr(color, kError)});
  }
  // Show the end: that is where the text streams in.
  const int space = in.h - row;
  const int start = std::max(0, static_cast<int>(rows.size()) - space);
  for (int i = start; i < static_cast<int>(rows.size()); ++i, ++row)
    Put(in.y + row, in.x, in.w, rows[i].first, rows[i].second);
}

void DrawHelp(const std::vector<std::string>& lines, int rows, int cols, bool color) {
  const int w = std::min(cols - 4, 110), h = std::min(rows - 4, static_cast<int>(lines.size()) + 3);
  const Box box{(rows - h) / 2, (cols - w) / 2, h, w};
  for (int y = box.y; y < box.y + box.h; ++y) Put(y, box.x, box.w, "", A_NORMAL, true);
  const Box in = Frame(box, "Help (Esc closes)", color);
  for (int i = 0; i < in.h && i < static_cast<int>(lines.size()); ++i)
    Put(in.y + i, in.x + 1, in.w - 1, lines[i], A_NORMAL);
}

std::string StatusLine(const Session& s) {
  const StatusView& v = s.status();
  std::string line = " " + v.model;
  if (!v.kv_formats.empty()) line += " | KV " + v.kv_formats;
  line += " | " + Format("%.1f tok/s", v.tokens_per_second);
  if (v.kv_bytes > 0) line += " | KV mem " + Bytes(v.kv_bytes) + Format(", %.0f%% shared", 100 * v.kv_shared);
  line += " | Lean: " + v.lean;
  return line;
}

}  // namespace

int DisplayWidth(std::string_view text) {
  int w = 0;
  for (size_t i = 0; i < text.size();) {
    const char32_t cp = NextCodePoint(text, &i);
    w += cp == '\t' ? 2 : CodePointWidth(cp);
  }
  return w;
}

std::vector<std::string> WrapText(std::string_view text, int width) {
  std::vector<std::string> lines(1);
  int used = 0;
  for (size_t i = 0; i < text.size();) {
    const size_t start = i;
    const char32_t cp = NextCodePoint(text, &i);
    if (cp == '\n') {
      lines.emplace_back();
      used = 0;
      continue;
    }
    const int w = cp == '\t' ? 2 : CodePointWidth(cp);
    if (used + w > width && used > 0) {
      lines.emplace_back();
      used = 0;
    }
    lines.back().append(text.substr(start, i - start));
    used += w;
  }
  if (lines.size() > 1 && lines.back().empty()) lines.pop_back();
  return lines;
}

void RestoreTerminal() {
  if (!g_curses_active) return;
  g_curses_active = false;
  endwin();
}

Result<std::unique_ptr<Screen>> Screen::Open() {
  if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO))
    return Unavailable("leanrotor tui needs a terminal on stdin and stdout");
  std::setlocale(LC_ALL, "");  // the user's UTF-8 locale, so that ncursesw and wcwidth handle Lean's Unicode
  if (newterm(nullptr, stdout, stdin) == nullptr)
    return Unavailable(
        "cannot start curses on this terminal (TERM=" + std::string(getenv("TERM") ? getenv("TERM") : "unset") + ")");
  g_curses_active = true;
  std::unique_ptr<Screen> screen(new Screen());
  raw();
  noecho();
  keypad(stdscr, TRUE);
  set_escdelay(25);
  curs_set(0);
  screen->color_ = has_colors() && getenv("NO_COLOR") == nullptr;
  if (screen->color_) InitColors();
  return screen;
}

Screen::~Screen() { RestoreTerminal(); }

void Screen::Draw(const Session& s) {
  int rows, cols;
  getmaxyx(stdscr, rows, cols);
  erase();
  if (rows < 12 || cols < 40) {
    Put(0, 0, cols, "terminal too small (need 40x12)", A_NORMAL);
    refresh();
    return;
  }
  // Title.
  std::string title = " leanrotor";
  const int t = s.current_theorem();
  if (t >= 0)
    title += "  theorem " + std::to_string(t + 1) + "/" + std::to_string(s.theorems().size()) + ": " +
             s.theorems()[t].name + (s.theorems()[t].has_sorry ? " (sorry)" : "");
  title += "  k=" + std::to_string(s.k()) + " turns=" + std::to_string(s.turns()) + "  ? help";
  Put(0, 0, cols, title, Attr(color_, kTitle), true);

  const int body_y = 1, body_h = rows - 3;
  if (cols >= 100) {
    const int left_w = cols / 2;
    const int source_h = std::max(5, body_h * 3 / 5);
    DrawSource(s, {body_y, 0, source_h, left_w}, color_);
    DrawGoals(s, {body_y + source_h, 0, body_h - source_h, left_w}, color_);
    DrawAttempts(s, {body_y, left_w, body_h, cols - left_w}, color_);
  } else {
    const int source_h = std::max(4, body_h * 2 / 5), goals_h = std::max(3, body_h / 5);
    DrawSource(s, {body_y, 0, source_h, cols}, color_);
    DrawGoals(s, {body_y + source_h, 0, goals_h, cols}, color_);
    DrawAttempts(s, {body_y + source_h + goals_h, 0, body_h - source_h - goals_h, cols}, color_);
  }
  // Message or command line, then the status bar.
  if (s.command_active()) {
    Put(rows - 2, 0, cols, s.command_line(), A_NORMAL, true);
    curs_set(1);
  } else {
    Put(rows - 2, 0, cols, s.message(), A_NORMAL, true);
    curs_set(0);
  }
  Put(rows - 1, 0, cols, StatusLine(s), Attr(color_, kStatusBar), true);
  if (s.help_visible()) DrawHelp(Session::HelpLines(), rows, cols, color_);
  if (s.command_active()) move(rows - 2, std::min(cols - 1, DisplayWidth(s.command_line())));
  refresh();
}

std::optional<Key> Screen::ReadKey(int timeout_ms) {
  timeout(timeout_ms);
  wint_t ch = 0;
  const int kind = get_wch(&ch);
  if (kind == ERR) return std::nullopt;
  if (kind == KEY_CODE_YES) {
    switch (ch) {
      case KEY_UP: return Key::Special(Key::kUp);
      case KEY_DOWN: return Key::Special(Key::kDown);
      case KEY_PPAGE: return Key::Special(Key::kPageUp);
      case KEY_NPAGE: return Key::Special(Key::kPageDown);
      case KEY_HOME: return Key::Special(Key::kHome);
      case KEY_END: return Key::Special(Key::kEnd);
      case KEY_ENTER: return Key::Special(Key::kEnter);
      case KEY_BACKSPACE: return Key::Special(Key::kBackspace);
      case KEY_BTAB: return Key::Special(Key::kBackTab);
      default: return std::nullopt;  // KEY_RESIZE included: curses has updated the size already
    }
  }
  switch (ch) {
    case '\n':
    case '\r': return Key::Special(Key::kEnter);
    case 27: return Key::Special(Key::kEscape);
    case 127:
    case 8: return Key::Special(Key::kBackspace);
    case '\t': return Key::Special(Key::kTab);
    case 3: return Key::Special(Key::kCtrlC);
    default: break;
  }
  if (ch < 0x20) return std::nullopt;
  return Key::Char(static_cast<char32_t>(ch));
}

}  // namespace lr::tui
