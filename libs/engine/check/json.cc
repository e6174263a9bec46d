#include "json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace ls {
namespace check {

class Parser {
 public:
  explicit Parser(const std::string& t) : t_(t) {}

  Json document() {
    Json v = value();
    ws();
    if (i_ != t_.size()) fail("trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw std::runtime_error("JSON: " + why + " at offset " + std::to_string(i_));
  }
  void ws() {
    while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\n' || t_[i_] == '\r' || t_[i_] == '\t')) ++i_;
  }
  bool eat(const char* lit) {
    size_t n = 0;
    while (lit[n]) ++n;
    if (t_.compare(i_, n, lit) != 0) return false;
    i_ += n;
    return true;
  }

  Json value() {
    ws();
    if (i_ >= t_.size()) fail("unexpected end");
    Json v;
    const char c = t_[i_];
    if (c == '{') {
      v.type_ = Json::Type::object;
      ++i_;
      ws();
      if (i_ < t_.size() && t_[i_] == '}') {
        ++i_;
        return v;
      }
      for (;;) {
        ws();
        if (i_ >= t_.size() || t_[i_] != '"') fail("expected a key");
        std::string k = string();
        ws();
        if (i_ >= t_.size() || t_[i_] != ':') fail("expected ':'");
        ++i_;
        v.o_.emplace_back(std::move(k), value());
        ws();
        if (i_ < t_.size() && t_[i_] == ',') {
          ++i_;
          continue;
        }
        if (i_ < t_.size() && t_[i_] == '}') {
          ++i_;
          return v;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.type_ = Json::Type::array;
      ++i_;
      ws();
      if (i_ < t_.size() && t_[i_] == ']') {
        ++i_;
        return v;
      }
      for (;;) {
        v.a_.push_back(value());
        ws();
        if (i_ < t_.size() && t_[i_] == ',') {
          ++i_;
          continue;
        }
        if (i_ < t_.size() && t_[i_] == ']') {
          ++i_;
          return v;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.type_ = Json::Type::string;
      v.s_ = string();
      return v;
    }
    if (eat("true")) {
      v.type_ = Json::Type::boolean;
      v.b_ = true;
      return v;
    }
    if (eat("false")) {
      v.type_ = Json::Type::boolean;
      return v;
    }
    if (eat("null")) return v;
    // A number: strtod reads JSON's grammar (and a little more, which is harmless here).
    const char* begin = t_.c_str() + i_;
    char* end = nullptr;
    const double d = std::strtod(begin, &end);
    if (end == begin) fail(std::string("unexpected character '") + c + "'");
    i_ += static_cast<size_t>(end - begin);
    v.type_ = Json::Type::number;
    v.n_ = d;
    return v;
  }

  std::string string() {
    ++i_;  // opening quote
    std::string out;
    while (i_ < t_.size() && t_[i_] != '"') {
      char c = t_[i_++];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= t_.size()) fail("unterminated escape");
      c = t_[i_++];
      switch (c) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {
          if (i_ + 4 > t_.size()) fail("short \\u escape");
          unsigned cp = static_cast<unsigned>(std::stoul(t_.substr(i_, 4), nullptr, 16));
          i_ += 4;
          // UTF-8 (surrogate pairs are not needed by any input here and pass through as two units).
          if (cp < 0x80) {
            out += static_cast<char>(cp);
          } else if (cp < 0x800) {
            out += static_cast<char>(0xc0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3f));
          } else {
            out += static_cast<char>(0xe0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
            out += static_cast<char>(0x80 | (cp & 0x3f));
          }
          break;
        }
        default: out += c;  // \" \\ \/
      }
    }
    if (i_ >= t_.size()) fail("unterminated string");
    ++i_;
    return out;
  }

  const std::string& t_;
  size_t i_ = 0;
};

Json Json::parse(const std::string& text) { return Parser(text).document(); }

Json Json::read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return parse(ss.str());
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
}

namespace {
const char* type_name(Json::Type t) {
  switch (t) {
    case Json::Type::null: return "null";
    case Json::Type::boolean: return "a boolean";
    case Json::Type::number: return "a number";
    case Json::Type::string: return "a string";
    case Json::Type::array: return "an array";
    case Json::Type::object: return "an object";
  }
  return "?";
}
[[noreturn]] void mismatch(const char* what, const char* want, Json::Type got) {
  throw std::runtime_error(std::string(what) + " must be " + want + ", got " + type_name(got));
}
}  // namespace

double Json::num(const char* what) const {
  if (type_ != Type::number) mismatch(what, "a number", type_);
  return n_;
}
bool Json::boolean(const char* what) const {
  if (type_ != Type::boolean) mismatch(what, "a boolean", type_);
  return b_;
}
const std::string& Json::str(const char* what) const {
  if (type_ != Type::string) mismatch(what, "a string", type_);
  return s_;
}
const std::vector<Json>& Json::arr(const char* what) const {
  if (type_ != Type::array) mismatch(what, "an array", type_);
  return a_;
}
const std::vector<std::pair<std::string, Json>>& Json::obj(const char* what) const {
  if (type_ != Type::object) mismatch(what, "an object", type_);
  return o_;
}
const Json* Json::find(const std::string& key) const {
  if (type_ != Type::object) return nullptr;
  for (const auto& kv : o_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}
const Json& Json::at(const std::string& key) const {
  const Json* v = find(key);
  if (!v) throw std::runtime_error("missing key '" + key + "'");
  return *v;
}
size_t Json::size() const { return type_ == Type::array ? a_.size() : type_ == Type::object ? o_.size() : 0; }

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

namespace {
std::string number(double v) {
  if (!std::isfinite(v)) return "null";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  // Shorter when it reads back the same.
  for (int prec = 6; prec < 17; ++prec) {
    char b2[32];
    std::snprintf(b2, sizeof b2, "%.*g", prec, v);
    if (std::strtod(b2, nullptr) == v) return b2;
  }
  return buf;
}
}  // namespace

std::string Json::dump() const {
  switch (type_) {
    case Type::null: return "null";
    case Type::boolean: return b_ ? "true" : "false";
    case Type::number: return number(n_);
    case Type::string: return quote(s_);
    case Type::array: {
      std::string out = "[";
      for (size_t i = 0; i < a_.size(); ++i) out += (i ? "," : "") + a_[i].dump();
      return out + "]";
    }
    case Type::object: {
      std::string out = "{";
      for (size_t i = 0; i < o_.size(); ++i) out += (i ? "," : "") + quote(o_[i].first) + ":" + o_[i].second.dump();
      return out + "}";
    }
  }
  return "null";
}

void Writer::comma() {
  if (after_key_) {
    after_key_ = false;
    return;
  }
  if (!first_.empty()) {
    if (!first_.back()) out_ += ',';
    first_.back() = false;
  }
}
Writer& Writer::begin_object() {
  comma();
  out_ += '{';
  first_.push_back(true);
  return *this;
}
Writer& Writer::end_object() {
  out_ += '}';
  first_.pop_back();
  return *this;
}
Writer& Writer::begin_array() {
  comma();
  out_ += '[';
  first_.push_back(true);
  return *this;
}
Writer& Writer::end_array() {
  out_ += ']';
  first_.pop_back();
  return *this;
}
Writer& Writer::key(const std::string& k) {
  comma();
  out_ += quote(k) + ':';
  after_key_ = true;
  return *this;
}
Writer& Writer::value(double v) {
  comma();
  out_ += number(v);
  return *this;
}
Writer& Writer::value(bool v) {
  comma();
  out_ += v ? "true" : "false";
  return *this;
}
Writer& Writer::value(const std::string& v) {
  comma();
  out_ += quote(v);
  return *this;
}
Writer& Writer::null() {
  comma();
  out_ += "null";
  return *this;
}
Writer& Writer::raw(const std::string& json) {
  comma();
  out_ += json;
  return *this;
}

}  // namespace check
}  // namespace ls
