#pragma once
#include <napi.h>

namespace ls::dp {
// Adds `dataplane` (Listener, Sender, encodeHeader, checksum, constants) to the addon's exports.
void register_dataplane(Napi::Env env, Napi::Object exports);
}  // namespace ls::dp
