// The server's configuration: one JSON specification, its defaults those of ServerOptions, and
// the command line's fields laid over a config file's.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "lepton/common/errors.h"
#include "lepton/server/server_config.h"

namespace lepton {
namespace {

namespace fs = std::filesystem;

std::string WriteTemp(const std::string& text) {
  std::random_device rd;
  const fs::path p =
      fs::temp_directory_path() / ("lepton-config-" + std::to_string(rd()) + ".json");
  std::ofstream(p) << text;
  return p.string();
}

TEST(ServerConfig, AnEmptyConfigurationIsServerOptionsDefaults) {
  const ServerOptions o = ServerOptionsFromJson("{}");
  const ServerOptions d;
  EXPECT_EQ(o.host, d.host);
  EXPECT_EQ(o.port, d.port);
  EXPECT_EQ(o.max_buffered_bytes, d.max_buffered_bytes);
  EXPECT_EQ(o.busy_poll_s, d.busy_poll_s);
  EXPECT_EQ(o.serve_all, d.serve_all);
  EXPECT_EQ(o.deployment.servable.max_batch_size, d.deployment.servable.max_batch_size);
  const auto defaults = nlohmann::json::parse(ServerConfigDefaults());
  EXPECT_EQ(defaults["port"], d.port);
  EXPECT_EQ(defaults["busy_poll_us"], 100);
  // The defaults document is itself a valid configuration.
  EXPECT_NO_THROW(ServerOptionsFromJson(defaults.dump()));
}

TEST(ServerConfig, FieldsModelsAndDeploymentOptionsAreRead) {
  const ServerOptions o = ServerOptionsFromJson(R"({
      "host": "0.0.0.0", "port": 0, "token_for_inference": true, "read_timeout": 2,
      "busy_poll_us": 0, "only": true, "max_batch_size": 8, "max_queue_delay_ms": 2,
      "models": {"a": "@prod", "b": "v2", "c": null,
                 "d": {"versions": ["v1", "v2"], "policy": {"type": "weighted",
                                                             "weights": {"v1": 1, "v2": 1}}}}})");
  EXPECT_EQ(o.host, "0.0.0.0");
  EXPECT_EQ(o.port, 0);
  EXPECT_TRUE(o.token_for_inference);
  EXPECT_EQ(o.read_timeout_s, 2);
  EXPECT_EQ(o.write_timeout_s, 2);
  EXPECT_EQ(o.busy_poll_s, 0);
  EXPECT_FALSE(o.serve_all);
  EXPECT_EQ(o.deployment.servable.max_batch_size, 8);
  EXPECT_DOUBLE_EQ(o.deployment.servable.max_queue_delay_s, 0.002);
  ASSERT_EQ(o.models.size(), 4u);
  EXPECT_EQ(o.models[0].alias, "prod");
  EXPECT_EQ(o.models[1].versions, std::vector<std::string>{"v2"});
  EXPECT_FALSE(o.models[2].alias);
  EXPECT_TRUE(o.models[2].versions.empty());
  EXPECT_EQ(nlohmann::json::parse(o.models[3].policy)["type"], "weighted");
}

TEST(ServerConfig, AMemoryBudgetIsOneForEveryModel) {
  const ServerOptions o = ServerOptionsFromJson(R"({"memory_budget": "2GB", "eviction": "lfu"})");
  ASSERT_TRUE(o.deployment.memory_budget);
  EXPECT_EQ(o.deployment.memory_budget->limit(), 2000000000);
  EXPECT_EQ(o.deployment.memory_budget->eviction(), Eviction::kLfu);
  // Every deployment the server makes copies these options: they share the one budget.
  const DeploymentOptions copy = o.deployment;
  EXPECT_EQ(copy.memory_budget.get(), o.deployment.memory_budget.get());
  EXPECT_EQ(
      ServerOptionsFromJson(R"({"memory_budget": 1048576})").deployment.memory_budget->limit(),
      1048576);
  EXPECT_FALSE(ServerOptionsFromJson("{}").deployment.memory_budget);
  for (const char* bad :
       {R"({"memory_budget": "lots"})", R"({"memory_budget": 0})", R"({"memory_budget": true})",
        R"({"eviction": "fifo"})", R"({"pin": "v1"})", R"({"load_threads": 0})"}) {
    EXPECT_THROW(ServerOptionsFromJson(bad), InvalidArgument) << bad;
  }
}

TEST(ServerConfig, BadConfigurationsAreRefusedByName) {
  for (const char* bad :
       {R"({"hots": "x"})", R"({"port": 70000})", R"({"port": "80"})", R"({"io_threads": 0})",
        R"({"read_timeout": -1})", R"({"models": []})", R"({"models": {"a": 3}})",
        R"({"models": {"a": {"alias": "p", "versions": ["v1"]}}})",
        R"({"models": {"a": {"policy": {"type": "nope"}}}})", R"({"models": {"a": {"x": 1}}})",
        R"({"max_batch_size": 0})", R"([1])", R"(nope)"}) {
    EXPECT_THROW(ServerOptionsFromJson(bad), InvalidArgument) << bad;
  }
}

TEST(ServerConfig, TheCommandLineIsLaidOverTheFile) {
  const std::string path = WriteTemp(R"({"port": 9000, "max_batch_size": 4,
      "models": {"a": "@prod", "b": {"alias": "stable", "policy": {"type": "fixed"}}}})");
  // A policy alone keeps the file's alias; a model given whole replaces the file's entry.
  const ServerOptions o = LoadServerConfig(path, R"({"port": 0, "models": {
      "a": {"policy": {"type": "fixed"}},
      "b": {"alias": null, "versions": ["v3"], "policy": null},
      "c": {}}})");
  fs::remove(path);
  EXPECT_EQ(o.port, 0);
  EXPECT_EQ(o.deployment.servable.max_batch_size, 4);
  ASSERT_EQ(o.models.size(), 3u);
  EXPECT_EQ(o.models[0].alias, "prod");
  EXPECT_EQ(nlohmann::json::parse(o.models[0].policy)["type"], "fixed");
  EXPECT_FALSE(o.models[1].alias);
  EXPECT_EQ(o.models[1].versions, std::vector<std::string>{"v3"});
  EXPECT_EQ(o.models[1].policy, "");
  EXPECT_EQ(o.models[2].name, "c");
  EXPECT_THROW(LoadServerConfig("/nonexistent/lepton.json", "{}"), NotFound);
  const std::string broken = WriteTemp("{not json");
  EXPECT_THROW(LoadServerConfig(broken, "{}"), InvalidArgument);
  fs::remove(broken);
}

}  // namespace
}  // namespace lepton
