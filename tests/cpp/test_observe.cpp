// Metrics, Prometheus text, anomaly flags, the event log, OIP request decoding and policy JSON.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "lepton/common/errors.h"
#include "lepton/observe/events.h"
#include "lepton/observe/metrics.h"
#include "lepton/policy/policy_config.h"
#include "lepton/protocol/oip.h"

using namespace lepton;

TEST(Histogram, QuantilesInterpolateWithinBuckets) {
  Histogram h({1, 2, 4, 8});
  for (int i = 0; i < 100; ++i) h.Observe(1.5);  // all in (1, 2]
  auto s = h.snapshot();
  EXPECT_EQ(s.count, 100u);
  EXPECT_NEAR(s.sum, 150, 1e-9);
  EXPECT_GT(s.Quantile(0.5), 1.0);
  EXPECT_LE(s.Quantile(0.99), 2.0);
  for (int i = 0; i < 100; ++i) h.Observe(100);  // the +Inf bucket
  s = h.snapshot();
  EXPECT_LE(s.Quantile(0.4), 2.0);
  EXPECT_EQ(s.Quantile(0.99), 8.0);  // capped at the largest bound
  EXPECT_TRUE(std::isnan(Histogram({1}).snapshot().Quantile(0.5)));
  const auto d = s.Minus(s);
  EXPECT_EQ(d.count, 0u);
}

TEST(Histogram, ConcurrentObservationsAreAllCounted) {
  Histogram h(LatencyBuckets());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&h, t] {
      for (int i = 0; i < 20000; ++i) h.Observe(1e-4 * ((i + t) % 50));
    });
  }
  for (auto& t : threads) t.join();
  const auto s = h.snapshot();
  EXPECT_EQ(s.count, 80000u);
  uint64_t total = 0;
  for (auto c : s.counts) total += c;
  EXPECT_EQ(total, 80000u);
}

TEST(ProcessMetrics, ResidentMemoryAndThreadsAreMeasured) {
  const int64_t before = ProcessResidentBytes();
  ASSERT_GT(before, 0);
  std::vector<char> block(64 << 20);
  for (size_t i = 0; i < block.size(); i += 4096) block[i] = 1;  // touched: resident now
  EXPECT_GE(ProcessResidentBytes() - before, 48 << 20);
  const int64_t threads = ProcessThreads();
  ASSERT_GE(threads, 1);
  std::promise<void> release;
  std::thread other([done = release.get_future()]() mutable { done.wait(); });
  EXPECT_GE(ProcessThreads(), threads + 1);
  release.set_value();
  other.join();
  const std::string text = ProcessMetricsText();
  EXPECT_NE(text.find("# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes "),
            std::string::npos);
  EXPECT_NE(text.find("# TYPE process_threads gauge\nprocess_threads "), std::string::npos);
}

TEST(RequestMetrics, AThreadFindsItsLastSeriesOnlyInTheMetricsThatHoldIt) {
  RequestMetrics a, b;
  RequestSeries& a1 = a.Series("m", "v1", "", "fixed");
  EXPECT_EQ(&a.Series("m", "v1", "", "fixed"), &a1);
  EXPECT_EQ(&a.Series({"m", "v1", "", "fixed"}), &a1);
  RequestSeries& b1 = b.Series("m", "v1", "", "fixed");  // the same labels elsewhere
  EXPECT_NE(&b1, &a1);
  EXPECT_EQ(&a.Series("m", "v1", "", "fixed"), &a1);
  EXPECT_NE(&a.Series("m", "v1", "prod", "fixed"), &a1);
  EXPECT_NE(&a.Series("m", "v1", "", "weighted"), &a1);
  EXPECT_NE(&a.Series("m", "v2", "", "fixed"), &a1);
  EXPECT_EQ(&a.Series("m", "v1", "", "fixed"), &a1);
  a1.Succeeded(0.001, 0.002, 0.003, 4);
  b1.Succeeded(0.001, 0.002, 0.003, 4);
  b1.Failed(FailureReason::kTimeout, 0.5);
  // Another thread finds the same series.
  std::thread other([&] { a.Series("m", "v1", "", "fixed").Succeeded(0, 0.001, 0.001, 1); });
  other.join();
  std::map<std::string, RequestSeries::Snapshot> by_version;
  for (const auto& s : a.Snapshot()) by_version[s.key.version + s.key.alias + s.key.policy] = s;
  ASSERT_EQ(by_version.size(), 4u);
  EXPECT_EQ(by_version["v1fixed"].requests, 2u);
  EXPECT_EQ(by_version["v1fixed"].succeeded, 2u);
  EXPECT_EQ(by_version["v1fixed"].total.count, 2u);
  EXPECT_NEAR(by_version["v1fixed"].total.sum, 0.004, 1e-12);
  EXPECT_GT(by_version["v1fixed"].last_ms, 0);
  EXPECT_EQ(by_version["v2fixed"].requests, 0u);
  const auto bs = b.Snapshot();
  ASSERT_EQ(bs.size(), 1u);
  EXPECT_EQ(bs[0].requests, 2u);
  EXPECT_EQ(bs[0].succeeded, 1u);
  EXPECT_EQ(bs[0].total.count, 2u);
}

TEST(Prometheus, FollowsTheTextFormat) {
  RequestMetrics m;
  auto& a = m.Series({"m", "v1", "prod", "fixed"});
  a.Succeeded(0.001, 0.002, 0.003, 4);
  a.Failed(FailureReason::kTimeout, 0.5);
  m.Series({"m", "v\"2", "", "weighted"}).Failed(FailureReason::kInvalidInput, 0.0001);
  MetricsSnapshot snap;
  snap.series = m.Snapshot();
  snap.versions.push_back({"m", "v1", "ready", 2, 1, 3, 1000, true});
  const std::string text = RenderPrometheus({snap});
  EXPECT_NE(text.find("# TYPE lepton_requests_total counter"), std::string::npos);
  EXPECT_NE(
      text.find(
          "lepton_requests_total{model=\"m\",version=\"v1\",alias=\"prod\",policy=\"fixed\"} 2"),
      std::string::npos);
  EXPECT_NE(text.find("reason=\"timeout\"} 1"), std::string::npos);
  EXPECT_NE(text.find("version=\"v\\\"2\""), std::string::npos);  // escaped quote
  EXPECT_NE(
      text.find("lepton_request_duration_seconds_bucket{model=\"m\",version=\"v1\",alias=\"prod\","
                "policy=\"fixed\",le=\"+Inf\"} 2"),
      std::string::npos);
  // Bucket bounds in their shortest form, as SLO selectors such as {le="0.1"} write them.
  EXPECT_NE(text.find("policy=\"fixed\",le=\"0.1\"} "), std::string::npos);
  EXPECT_NE(text.find("le=\"0.0025\"} "), std::string::npos);
  EXPECT_EQ(text.find("00000000"), std::string::npos);
  EXPECT_NE(text.find("lepton_batch_size_rows_count"), std::string::npos);
  EXPECT_NE(text.find("lepton_version_anomalous{model=\"m\",version=\"v1\"} 1"), std::string::npos);
  // Each metric family is declared once, and every sample line is "name{labels} value".
  size_t helps = 0;
  for (size_t p = text.find("# HELP lepton_requests_total"); p != std::string::npos;
       p = text.find("# HELP lepton_requests_total", p + 1)) {
    ++helps;
  }
  EXPECT_EQ(helps, 1u);
}

TEST(Anomaly, FlagsAnErrorBurstAndALatencyJumpThenClears) {
  AnomalyDetector d;
  std::mt19937 rng(7);
  std::normal_distribution<double> jitter(0.010, 0.0005);
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(d.Update(100, i % 3 == 0 ? 1 : 0, jitter(rng)).empty());
  auto c = d.Update(100, 30, jitter(rng));
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].signal, "error_rate");
  EXPECT_TRUE(c[0].anomalous);
  EXPECT_TRUE(d.anomalous());
  c = d.Update(100, 0, jitter(rng));
  ASSERT_EQ(c.size(), 1u);
  EXPECT_FALSE(c[0].anomalous);
  c = d.Update(100, 0, 0.05);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].signal, "latency_p99");
  // Quiet intervals (too few requests) are not judged.
  EXPECT_TRUE(d.Update(3, 3, 1.0).empty());
}

TEST(EventLog, KeepsOrderFollowsBySequenceAndWritesJsonLines) {
  EventLog log(5);
  const auto dir = std::filesystem::temp_directory_path() / "lepton_events_test";
  std::filesystem::create_directories(dir);
  const auto path = (dir / "events.jsonl").string();
  std::filesystem::remove(path);
  log.SetFile(path);
  for (int i = 0; i < 8; ++i) log.Emit("info", "load", "m", "v" + std::to_string(i), "loaded");
  EXPECT_EQ(log.last_seq(), 8);
  const auto recent = log.Recent(100);
  ASSERT_EQ(recent.size(), 5u);  // the ring keeps the latest 5
  EXPECT_EQ(recent.front().seq, 4);
  EXPECT_EQ(log.Since(6).size(), 2u);
  // A waiting reader wakes when an event arrives.
  std::atomic<size_t> got{0};
  std::thread reader([&] { got = log.Since(8, 5.0).size(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  log.Emit("warning", "rollback", "m", "v1", "guardrail \"breached\"", R"({"p": 0.01})");
  reader.join();
  EXPECT_EQ(got.load(), 1u);
  log.SetFile("");
  std::ifstream in(path);
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["model"], "m");
    ++lines;
    if (lines == 9) EXPECT_EQ(j["details"]["p"], 0.01);
  }
  EXPECT_EQ(lines, 9);
  EXPECT_THROW(log.SetFile("/proc/no/such/dir/x.jsonl"), StorageError);
}

TEST(Oip, DecodesTypedFlatAndNestedTensors) {
  const auto r = oip::DecodeInferRequest(R"({"id": "a", "inputs": [
      {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]},
      {"name": "y", "shape": [3], "datatype": "INT64", "data": [-1, 0, 9007199254740993]},
      {"name": "z", "shape": [2], "datatype": "BOOL", "data": [true, false]}],
      "parameters": {"key": "user-1", "lepton_timeout": 0.5, "lepton_priority": 2, "other": 1},
      "outputs": [{"name": "out"}]})");
  EXPECT_EQ(r.id, "a");
  ASSERT_EQ(r.inputs.size(), 3u);
  float f[4];
  std::memcpy(f, r.inputs[0].data.data(), sizeof f);
  EXPECT_EQ(f[3], 4.5f);
  int64_t l[3];
  std::memcpy(l, r.inputs[1].data.data(), sizeof l);
  EXPECT_EQ(l[2], 9007199254740993LL);  // exact, not through a double
  EXPECT_EQ(r.inputs[2].data, std::string("\x01\x00", 2));
  EXPECT_EQ(*r.key, "user-1");
  EXPECT_EQ(*r.timeout_s, 0.5);
  EXPECT_EQ(*r.priority, 2);
  EXPECT_EQ(r.outputs, std::vector<std::string>{"out"});
  // Empty tensors are allowed.
  EXPECT_EQ(oip::DecodeInferRequest(
                R"({"inputs": [{"name": "x", "shape": [0, 4], "datatype": "FP32", "data": []}]})")
                .inputs[0]
                .data.size(),
            0u);
}

TEST(Oip, ReadsNonFiniteFloatsFromTheirNames) {
  const auto r = oip::DecodeInferRequest(R"({"inputs": [{"name": "x", "shape": [4],
      "datatype": "FP32", "data": ["NaN", "Infinity", "-inf", 2]}]})");
  float f[4];
  ASSERT_EQ(r.inputs[0].data.size(), sizeof f);
  std::memcpy(f, r.inputs[0].data.data(), sizeof f);
  EXPECT_TRUE(std::isnan(f[0]));
  EXPECT_EQ(f[1], INFINITY);
  EXPECT_EQ(f[2], -INFINITY);
  EXPECT_EQ(f[3], 2.0f);
  EXPECT_THROW(oip::DecodeInferRequest(R"({"inputs": [{"name": "x", "shape": [1],
      "datatype": "FP32", "data": ["one"]}]})"),
               InvalidArgument);
  EXPECT_THROW(oip::DecodeInferRequest(R"({"inputs": [{"name": "x", "shape": [1],
      "datatype": "INT32", "data": ["NaN"]}]})"),
               InvalidArgument);
}

TEST(Oip, RefusesMalformedRequestsNamingTheFault) {
  const std::pair<const char*, const char*> cases[] = {
      {"", "not valid JSON"},
      {"{\"inputs\": [", "not valid JSON"},
      {"3", "JSON object"},
      {R"({"inputs": {}})", "non-empty list"},
      {R"({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]})", "name"},
      {R"({"inputs": [{"name": "x", "shape": [1], "datatype": "UINT64", "data": [1]}]})",
       "not supported"},
      {R"({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1]}]})", "holds 2"},
      {R"({"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [-1]}]})",
       "out of range"},
      {R"({"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1.5]}]})",
       "integer"},
      {R"({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1e300]}]})",
       "FP32 range"},
      {R"({"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}]})",
       "true or false"},
      {R"({"inputs": [{"name": "x", "shape": [99999999, 99999999], "datatype": "FP32", "data": []}]})",
       "larger than the request limit"},
      {R"({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "nope": 1})",
       "unknown field 'nope'"},
      {R"({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "parameters": {"priority": "high"}})",
       "priority"},
  };
  for (const auto& [body, fragment] : cases) {
    try {
      oip::DecodeInferRequest(body);
      ADD_FAILURE() << "accepted: " << body;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos)
          << body << " -> " << e.what();
    }
  }
  // Deep nesting is refused, not recursed into until the stack runs out.
  std::string deep = R"({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": )";
  for (int i = 0; i < 5000; ++i) deep += "[";
  EXPECT_THROW(oip::DecodeInferRequest(deep), InvalidArgument);
}

TEST(Oip, EncodesResponses) {
  oip::InferResponse r;
  r.model = "m";
  r.version = "v1";
  r.id = "7";
  oip::WireTensor t;
  t.name = "out";
  t.shape = {2};
  t.datatype = oip::DataType::kFp64;
  const double d[2] = {1.5, NAN};
  t.data.assign(reinterpret_cast<const char*>(d), sizeof d);
  r.outputs.push_back(t);
  r.parameters = R"({"lepton_route": "why"})";
  const auto j = nlohmann::json::parse(oip::EncodeInferResponse(r));
  EXPECT_EQ(j["model_version"], "v1");
  EXPECT_EQ(j["outputs"][0]["data"][0], 1.5);
  EXPECT_EQ(j["outputs"][0]["data"][1], "NaN");  // JSON has no NaN; the protocol allows strings
  EXPECT_EQ(j["parameters"]["lepton_route"], "why");
}

TEST(Oip, EncodedFloatsReadBackExactlyAndStayFloats) {
  std::mt19937 rng(7);
  std::vector<float> values = {1.0f, -0.0f, 0.1f, 3e38f, 1e-45f, -2.5e-20f, 100.0f};
  std::uniform_real_distribution<float> u(-1e6f, 1e6f);
  for (int i = 0; i < 2000; ++i) values.push_back(u(rng) * std::pow(10.0f, i % 13 - 6));
  oip::InferResponse r;
  r.model = "quote\" back\\ newline\n tab\t";
  r.version = "v\x01";
  oip::WireTensor t;
  t.name = "out";
  t.shape = {static_cast<int64_t>(values.size())};
  t.data.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  r.outputs.push_back(t);
  const std::string text = oip::EncodeInferResponse(r);
  const auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j["model_name"], r.model);
  EXPECT_EQ(j["model_version"], r.version);
  EXPECT_FALSE(j.contains("parameters"));  // "{}" is left out
  const auto& data = j["outputs"][0]["data"];
  ASSERT_EQ(data.size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_TRUE(data[i].is_number_float()) << i << ": " << data[i].dump();
    EXPECT_EQ(static_cast<float>(data[i].get<double>()), values[i]) << i;
  }
  EXPECT_NE(text.find("[1.0,-0.0,0.1,"), std::string::npos) << text.substr(0, 200);
}

TEST(Oip, EncodesEveryDatatype) {
  oip::InferResponse r;
  r.model = "m";
  r.version = "v";
  auto add = [&](oip::DataType type, const void* p, size_t bytes, int64_t n) {
    oip::WireTensor t;
    t.name = oip::DataTypeName(type);
    t.datatype = type;
    t.shape = {1, n};
    t.data.assign(static_cast<const char*>(p), bytes);
    r.outputs.push_back(t);
  };
  const uint8_t b[2] = {1, 0};
  const uint8_t u8[2] = {0, 255};
  const int8_t i8[2] = {-128, 127};
  const int16_t i16[2] = {-32768, 32767};
  const int32_t i32[2] = {INT32_MIN, INT32_MAX};
  const int64_t i64[2] = {INT64_MIN, INT64_MAX};
  const double f64[2] = {0.1, INFINITY};
  add(oip::DataType::kBool, b, sizeof b, 2);
  add(oip::DataType::kUInt8, u8, sizeof u8, 2);
  add(oip::DataType::kInt8, i8, sizeof i8, 2);
  add(oip::DataType::kInt16, i16, sizeof i16, 2);
  add(oip::DataType::kInt32, i32, sizeof i32, 2);
  add(oip::DataType::kInt64, i64, sizeof i64, 2);
  add(oip::DataType::kFp64, f64, sizeof f64, 2);
  const auto j = nlohmann::json::parse(oip::EncodeInferResponse(r));
  const auto& o = j["outputs"];
  ASSERT_EQ(o.size(), 7u);
  EXPECT_EQ(o[0]["data"], nlohmann::json({true, false}));
  EXPECT_EQ(o[1]["data"], nlohmann::json({0, 255}));
  EXPECT_EQ(o[2]["data"], nlohmann::json({-128, 127}));
  EXPECT_EQ(o[3]["data"], nlohmann::json({-32768, 32767}));
  EXPECT_EQ(o[4]["data"], nlohmann::json({INT32_MIN, INT32_MAX}));
  EXPECT_EQ(o[5]["data"][0].get<int64_t>(), INT64_MIN);
  EXPECT_EQ(o[5]["data"][1].get<int64_t>(), INT64_MAX);
  EXPECT_EQ(o[6]["data"][0].get<double>(), 0.1);
  EXPECT_EQ(o[6]["data"][1], "Infinity");
  EXPECT_EQ(o[6]["shape"], nlohmann::json({1, 2}));
  EXPECT_EQ(o[6]["datatype"], "FP64");
}

TEST(PolicyConfig, BuildsEveryTypeAndRefusesBadSpecs) {
  const char* good[] = {
      R"({"type": "fixed"})",
      R"({"type": "ensemble", "weights": {"a": 0.5, "b": 0.5}, "on_error": "skip"})",
      R"({"type": "weighted", "weights": [["a", 1], ["b", 3]], "sticky": true})",
      R"({"type": "canary", "stable": "a", "candidate": "b", "steps": [0.1, 1], "step_requests": 10,
          "guardrails": {"max_latency_ratio": 2}})",
      R"({"type": "shadow", "primary": "a", "mirrors": ["b"]})",
      R"({"type": "bandit", "versions": ["a", "b"], "algorithm": "ucb1"})",
      R"({"type": "least_loaded"})",
      R"({"type": "balanced", "by": "resources"})",
      R"({"type": "ab_test", "control": "a", "treatment": "b", "alpha": 0.01})",
      R"({"type": "time_based", "schedule": [{"version": "a"}, {"version": "b", "start": 10}]})",
  };
  for (const char* g : good) EXPECT_NO_THROW(PolicyFromJson(g)) << g;
  EXPECT_EQ(PolicyFromJson(good[2])->name(), "weighted");
  const std::pair<const char*, const char*> bad[] = {
      {"{", "not valid JSON"},
      {R"({"weights": {}})", "type"},
      {R"({"type": "coin"})", "unknown policy type"},
      {R"({"type": "weighted", "weights": {"a": "x"}})", "must be a number"},
      {R"({"type": "weighted", "weights": {"a": 1}, "stiky": true})", "unknown field 'stiky'"},
      {R"({"type": "canary", "stable": "a"})", "candidate"},
      {R"({"type": "bandit", "versions": ["a"], "algorithm": "greedy"})", "algorithm"},
      {R"({"type": "canary", "stable": "a", "candidate": "b", "step_requests": 5, "guardrails": {"window": -1}})",
       "window"},
      {R"({"type": "bandit", "versions": ["a", "b"], "seed": -3})", "seed"},
  };
  for (const auto& [text, fragment] : bad) {
    try {
      PolicyFromJson(text);
      ADD_FAILURE() << "accepted: " << text;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos)
          << text << " -> " << e.what();
    }
  }
}

// Names that Triton's clients send keep Triton's meaning; lepton's own take the lepton_ prefix.
TEST(Oip, TritonsTimeoutAndPriorityKeepTheirMeaning) {
  auto with = [](const std::string& parameters) {
    return oip::DecodeInferRequest(
        R"({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], )"
        R"("parameters": )" +
        parameters + "}");
  };
  EXPECT_DOUBLE_EQ(*with(R"({"timeout": 1000000})").timeout_s, 1.0);     // microseconds
  EXPECT_DOUBLE_EQ(*with(R"({"lepton_timeout": 2.5})").timeout_s, 2.5);  // seconds
  EXPECT_FALSE(with(R"({"priority": 0})").priority);                     // the default
  const int first = *with(R"({"priority": 1})").priority;
  const int second = *with(R"({"priority": 2})").priority;
  EXPECT_GT(first, second);  // 1 is Triton's highest: served first
  EXPECT_GT(second, 0);      // and ahead of requests at the default priority
  EXPECT_EQ(*with(R"({"lepton_priority": 5})").priority, 5);
  EXPECT_THROW(with(R"({"priority": -1})"), InvalidArgument);
  EXPECT_THROW(with(R"({"timeout": 0})"), InvalidArgument);
  EXPECT_EQ(with("null").inputs.size(), 1u);  // "parameters": null, as pydantic clients send
}
