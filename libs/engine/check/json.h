// A small JSON reader and writer for the native driver's inputs (the case table, stage fixtures,
// PyTorch's report) and its one-line reports. Objects keep their key order.
#pragma once

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace ls {
namespace check {

class Json {
 public:
  enum class Type { null, boolean, number, string, array, object };

  Json() = default;
  static Json parse(const std::string& text);  // throws std::runtime_error with the offset
  static Json read_file(const std::string& path);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::null; }
  bool is_number() const { return type_ == Type::number; }
  bool is_string() const { return type_ == Type::string; }
  bool is_array() const { return type_ == Type::array; }
  bool is_object() const { return type_ == Type::object; }

  // Typed access; each throws std::runtime_error naming `what` on a type mismatch.
  double num(const char* what = "value") const;
  bool boolean(const char* what = "value") const;
  const std::string& str(const char* what = "value") const;
  const std::vector<Json>& arr(const char* what = "value") const;
  const std::vector<std::pair<std::string, Json>>& obj(const char* what = "value") const;

  // Object member, or nullptr when absent (or when this is not an object).
  const Json* find(const std::string& key) const;
  // Object member; throws when absent.
  const Json& at(const std::string& key) const;
  size_t size() const;
  const Json& operator[](size_t i) const { return arr()[i]; }

  // Compact serialisation (numbers with 17 significant digits, so they read back exactly).
  std::string dump() const;

 private:
  friend class Parser;
  Type type_ = Type::null;
  bool b_ = false;
  double n_ = 0;
  std::string s_;
  std::vector<Json> a_;
  std::vector<std::pair<std::string, Json>> o_;
};

// Builds one JSON object or array as text; values are appended in order.
class Writer {
 public:
  Writer& begin_object();
  Writer& end_object();
  Writer& begin_array();
  Writer& end_array();
  Writer& key(const std::string& k);
  Writer& value(double v);  // NaN and infinities are written as null
  Writer& value(int v) { return value(static_cast<double>(v)); }
  Writer& value(size_t v) { return value(static_cast<double>(v)); }
  Writer& value(bool v);
  Writer& value(const std::string& v);
  Writer& value(const char* v) { return value(std::string(v)); }
  Writer& null();
  Writer& raw(const std::string& json);  // an already serialised value
  const std::string& str() const { return out_; }

 private:
  void comma();
  std::string out_;
  std::vector<bool> first_;  // per open container: nothing written yet
  bool after_key_ = false;
};

std::string quote(const std::string& s);

}  // namespace check
}  // namespace ls
