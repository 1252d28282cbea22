// The server's configuration as JSON: the one specification that `lepton serve` (its --config
// file and flags) and Python's lepton.serve() write, read here with ServerOptions' defaults.
//
//   {"host": "0.0.0.0", "port": 8000, "token": "...", "token_for_inference": false,
//    "open_feedback": false, "max_body_bytes": 67108864, "max_buffered_bytes": 536870912,
//    "read_timeout": 5, "keep_alive": 5, "request_timeout": 0, "io_threads": 2,
//    "busy_poll_us": 100, "http_threads": 64, "only": false,
//    "models": {"clf": "@production", "ranker": "v2",
//               "fraud": {"alias": "prod" | "versions": ["v1", "v2"], "policy": {...}}},
//    ...and any deployment field (runtime/deployment_options.h), for every served model}
//
// Durations are in seconds unless named _us or _ms. Unknown fields, wrong types and bad policies
// raise InvalidArgument naming them.
#pragma once

#include <string>

#include "lepton/server/server.h"

namespace lepton {

ServerOptions ServerOptionsFromJson(const std::string& json_text);

// The configuration in the JSON file at `path` ("": none), with `overrides` (a JSON object, e.g.
// the command line's flags) on top: each top-level field replaces the file's, and each model in
// "models" replaces the fields of the file's entry for that model that it names (null removes
// one), so that a policy given on the command line keeps the alias the file gives.
ServerOptions LoadServerConfig(const std::string& path, const std::string& overrides);

// The defaults of every top-level field, as a JSON object (for help texts).
std::string ServerConfigDefaults();

}  // namespace lepton
