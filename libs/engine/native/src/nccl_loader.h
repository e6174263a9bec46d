// Opens NCCL at run time (dlopen) and resolves the functions nccl_abi.h declares. Nothing links
// against NCCL, so the addon loads on machines without it; a data-plane hop uses NCCL only when
// both of its ends loaded it.
#pragma once

#include <string>

#include "nccl_abi.h"

namespace ls::nccl {

// The library named `library` (default kLibrary), opened once per name; nullptr and `*why` (which
// names the library and what was wrong: not found, a missing symbol, an unsupported version) when
// it cannot be used. Thread-safe.
const Api* load(std::string* why, const std::string& library = kLibrary);

// "2.21.5" for 22105.
std::string version_string(int version);

}  // namespace ls::nccl
