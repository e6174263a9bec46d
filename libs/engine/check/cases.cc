#include "cases.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <stdexcept>

#include "json.h"
#include "rng.h"

namespace ls {
namespace check {

namespace {

std::string param_name(const std::string& p) {
  const std::string suffix = " (float)";
  return p.size() > suffix.size() && p.compare(p.size() - suffix.size(), suffix.size(), suffix) == 0
             ? p.substr(0, p.size() - suffix.size())
             : p;
}

std::string slot_name(const std::string& s) { return !s.empty() && s.back() == '?' ? s.substr(0, s.size() - 1) : s; }

// A product of param names and integers: "batch*keys*heads*headDim", "2*n".
size_t eval_size(const std::string& expr, const std::vector<std::string>& names, const std::vector<double>& params,
                 const std::string& where) {
  size_t n = 1, start = 0;
  for (;;) {
    const size_t star = expr.find('*', start);
    std::string f = expr.substr(start, star == std::string::npos ? std::string::npos : star - start);
    f.erase(0, f.find_first_not_of(' '));
    f.erase(f.find_last_not_of(' ') + 1);
    if (!f.empty() && std::all_of(f.begin(), f.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      n *= static_cast<size_t>(std::stoull(f));
    } else {
      const auto it = std::find(names.begin(), names.end(), f);
      if (it == names.end()) throw std::runtime_error(where + ": size '" + expr + "' names '" + f + "', which is not a param");
      n *= static_cast<size_t>(params[it - names.begin()]);
    }
    if (star == std::string::npos) return n;
    start = star + 1;
  }
}

InputSpec parse_spec(const Json& j, const std::vector<std::string>& names, const std::vector<double>& params,
                     const std::string& where) {
  InputSpec s;
  if (j.is_null()) return s;
  if (j.is_string()) {
    if (j.str() != "normal") throw std::runtime_error(where + ": unknown input spec \"" + j.str() + "\"");
    s.kind = InputSpec::Kind::normal;
    return s;
  }
  if (!j.is_object()) throw std::runtime_error(where + ": an input spec must be null, \"normal\" or an object");
  if (const Json* v = j.find("normal")) {
    s.kind = InputSpec::Kind::normal;
    s.std = v->num("normal");
    if (const Json* m = j.find("mean")) s.mean = m->num("mean");
  } else if (const Json* f = j.find("fanIn")) {
    s.kind = InputSpec::Kind::normal;
    s.std = 1.0 / std::sqrt(f->num("fanIn"));
  } else if (const Json* u = j.find("uniform")) {
    s.kind = InputSpec::Kind::uniform;
    if (u->size() != 2) throw std::runtime_error(where + ": uniform needs [lo, hi]");
    s.lo = (*u)[0].num("uniform lo");
    s.hi = (*u)[1].num("uniform hi");
  } else if (const Json* vals = j.find("values")) {
    s.kind = InputSpec::Kind::values;
    for (const Json& x : vals->arr("values")) s.values.push_back(x.num("values"));
  } else if (const Json* ids = j.find("ids")) {
    s.kind = InputSpec::Kind::ids;
    s.vocab = eval_size(ids->str("ids"), names, params, where);
    if (s.vocab == 0) throw std::runtime_error(where + ": ids into an empty table");
  } else {
    throw std::runtime_error(where + ": unknown input spec " + j.dump());
  }
  if (const Json* tail = j.find("tail")) {
    s.tail_every = eval_size(tail->at("every").str("tail every"), names, params, where);
    s.tail_last = static_cast<size_t>(tail->at("last").num("tail last"));
    s.tail_value = tail->at("value").num("tail value");
    if (s.tail_every == 0 || s.tail_last > s.tail_every) throw std::runtime_error(where + ": tail.every must be positive and at least tail.last");
  }
  return s;
}

}  // namespace

CaseTable load_cases(const std::string& path) {
  const Json doc = Json::read_file(path);
  const Json& ops = doc.at("ops");
  for (const auto& kv : ops.obj("ops")) {
    bool known = false;
    for (int o = 0; o < kOpCount; ++o) known = known || op_info(static_cast<Op>(o)).name == kv.first;
    if (!known) throw std::runtime_error(path + ": unknown op '" + kv.first + "'");
  }
  CaseTable table;
  table.f32_inputs.resize(kOpCount);
  for (int o = 0; o < kOpCount; ++o) {
    const Op op = static_cast<Op>(o);
    const OpInfo& info = op_info(op);
    const std::string where_op = path + ": " + info.name;
    const Json* entry = ops.find(info.name);
    if (!entry || !entry->find("cases") || entry->at("cases").size() == 0)
      throw std::runtime_error(where_op + ": the op has no cases");
    std::vector<std::string> names;
    for (const auto& p : info.params) names.push_back(param_name(p));
    const auto& sizes = entry->at("inputs").arr("inputs");
    if (sizes.size() != info.inputs.size())
      throw std::runtime_error(where_op + ": " + std::to_string(sizes.size()) + " input sizes, the op has " +
                               std::to_string(info.inputs.size()) + " slots");
    if (const Json* keep = entry->find("f32Inputs")) {
      for (const Json& name : keep->arr("f32Inputs")) {
        const auto it = std::find(info.inputs.begin(), info.inputs.end(), name.str("f32Inputs"));
        if (it == info.inputs.end()) throw std::runtime_error(where_op + ": f32Inputs names '" + name.str() + "', not a slot");
        table.f32_inputs[o].push_back(static_cast<int>(it - info.inputs.begin()));
      }
    }
    std::set<std::string> labels;
    for (const Json& c : entry->at("cases").arr("cases")) {
      OpCase oc;
      oc.op = op;
      oc.label = c.at("label").str("label");
      const std::string where = where_op + " '" + oc.label + "'";
      if (!labels.insert(oc.label).second) throw std::runtime_error(where + ": duplicate label");
      for (const Json& p : c.at("params").arr("params")) oc.params.push_back(p.num("param"));
      if (oc.params.size() != names.size())
        throw std::runtime_error(where + ": " + std::to_string(oc.params.size()) + " params, the op has " +
                                 std::to_string(names.size()));
      const auto& specs = c.at("inputs").arr("inputs");
      if (specs.size() != info.inputs.size())
        throw std::runtime_error(where + ": " + std::to_string(specs.size()) + " input specs, the op has " +
                                 std::to_string(info.inputs.size()) + " slots");
      for (size_t s = 0; s < specs.size(); ++s) {
        oc.specs.push_back(parse_spec(specs[s], names, oc.params, where));
        if (oc.specs.back().kind == InputSpec::Kind::absent && !info.optional[s])
          throw std::runtime_error(where + ": slot '" + slot_name(info.inputs[s]) + "' is not optional");
        oc.sizes.push_back(eval_size(sizes[s].str("input size"), names, oc.params, where));
        if (oc.specs.back().tail_every && oc.sizes.back() % oc.specs.back().tail_every)
          throw std::runtime_error(where + ": tail.every does not divide the slot's " + std::to_string(oc.sizes.back()) +
                                   " elements");
        if (oc.specs.back().kind == InputSpec::Kind::values && oc.specs.back().values.size() != oc.sizes.back())
          throw std::runtime_error(where + ": " + std::to_string(oc.specs.back().values.size()) +
                                   " values given, the slot holds " + std::to_string(oc.sizes.back()));
      }
      table.cases.push_back(std::move(oc));
    }
  }
  return table;
}

std::vector<HostTensor> draw_inputs(const OpCase& c) {
  Rng rng = Rng::from({"conformance", op_info(c.op).name, c.label});
  std::vector<HostTensor> out(c.specs.size());
  for (size_t s = 0; s < c.specs.size(); ++s) {
    const InputSpec& spec = c.specs[s];
    HostTensor& t = out[s];
    if (spec.kind == InputSpec::Kind::absent) continue;
    t.present = true;
    t.data.resize(c.sizes[s]);
    switch (spec.kind) {
      case InputSpec::Kind::normal:
        rng.fill_normal(t.data.data(), t.data.size(), spec.std);
        // As `a[i] += mean` on a Float32Array: float64 sum, rounded to float32.
        if (spec.mean != 0)
          for (float& v : t.data) v = static_cast<float>(static_cast<double>(v) + spec.mean);
        break;
      case InputSpec::Kind::uniform:
        for (float& v : t.data) v = static_cast<float>(spec.lo + (spec.hi - spec.lo) * rng.uniform());
        break;
      case InputSpec::Kind::values:
        for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = static_cast<float>(spec.values[i]);
        break;
      case InputSpec::Kind::ids:
        // The last id, then 0, then uniform ones, as Math.floor(uniform() * vocab).
        for (size_t i = 0; i < t.data.size(); ++i)
          t.data[i] = static_cast<float>(i == 0   ? static_cast<double>(spec.vocab - 1)
                                         : i == 1 ? 0.0
                                                  : std::floor(rng.uniform() * static_cast<double>(spec.vocab)));
        break;
      case InputSpec::Kind::absent: break;
    }
    if (spec.tail_every)
      for (size_t row = 0; row < t.data.size(); row += spec.tail_every)
        for (size_t i = spec.tail_every - spec.tail_last; i < spec.tail_every; ++i)
          t.data[row + i] = static_cast<float>(spec.tail_value);
  }
  return out;
}

}  // namespace check
}  // namespace ls
