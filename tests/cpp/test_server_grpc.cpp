// The server's gRPC service under its callers' threads: inference while models are unloaded and
// loaded again, and servers stopped while calls are in flight, many rounds.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "engine_models.h"
#include "engine_registry.h"
#include "inference.grpc.pb.h"
#include "lepton/registry/artifact_format.h"
#include "lepton/server/server.h"
#include "test_util.h"

namespace lepton {
namespace {

using testing::AddN;
using testing::TempDir;

constexpr const char* kToken = "grpc-test-token";

class ServerGrpcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    reg_ = testing::EngineRegistry(dir_ / "reg");
    testing::RegisterLabelled(*reg_, "m", "v1", AddN(1));
  }

  std::unique_ptr<Server> Start() {
    ServerOptions o;
    o.port = 0;
    o.grpc_port = 0;
    o.token = kToken;
    o.deployment.threads = 2;
    auto s = std::make_unique<Server>(reg_, o);
    s->Start();
    return s;
  }

  // A channel of its own: channels share connections to a target by default, and one left
  // backing off by a stopped server would hold up the next server on the same port.
  static std::unique_ptr<inference::GRPCInferenceService::Stub> Stub(const Server& s) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return inference::GRPCInferenceService::NewStub(grpc::CreateCustomChannel(
        "127.0.0.1:" + std::to_string(s.grpc_port()), grpc::InsecureChannelCredentials(), args));
  }

  static inference::ModelInferRequest Request() {
    inference::ModelInferRequest req;
    req.set_model_name("m");
    auto* in = req.add_inputs();
    in->set_name("x");
    in->set_datatype("FP32");
    in->add_shape(1);
    in->add_shape(4);
    req.add_raw_input_contents(std::string(16, '\0'));
    return req;
  }

  // Infers once; the answer of AddN(1) to zeros is 1 everywhere. `message`, when given, receives
  // the status's message.
  static grpc::StatusCode Infer(inference::GRPCInferenceService::Stub& stub,
                                std::string* message = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    inference::ModelInferResponse resp;
    const grpc::Status st = stub.ModelInfer(&ctx, Request(), &resp);
    if (st.ok()) {
      EXPECT_EQ(resp.raw_output_contents_size(), 1);
      float out[4];
      EXPECT_EQ(resp.raw_output_contents(0).size(), sizeof out);
      std::memcpy(out, resp.raw_output_contents(0).data(), sizeof out);
      for (float v : out) EXPECT_EQ(v, 1.0f);
    }
    if (message) *message = st.error_message();
    return st.error_code();
  }

  TempDir dir_;
  std::shared_ptr<Registry> reg_;
};

TEST_F(ServerGrpcTest, InferenceWhileTheModelIsUnloadedAndLoadedAgain) {
  auto server = Start();
  auto stub = Stub(*server);
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, absent{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&] {
      auto mine = Stub(*server);
      while (!stop) {
        const grpc::StatusCode code = Infer(*mine);
        if (code == grpc::StatusCode::OK) {
          ++ok;
        } else {
          // Between an unload and the next load the model is not served.
          EXPECT_TRUE(code == grpc::StatusCode::NOT_FOUND || code == grpc::StatusCode::UNAVAILABLE)
              << code;
          ++absent;
        }
      }
    });
  }
  for (int round = 0; round < 50; ++round) {
    for (const bool load : {false, true}) {
      grpc::ClientContext ctx;
      ctx.AddMetadata("authorization", std::string("Bearer ") + kToken);
      grpc::Status st;
      if (load) {
        inference::RepositoryModelLoadRequest req;
        req.set_model_name("m");
        inference::RepositoryModelLoadResponse resp;
        st = stub->RepositoryModelLoad(&ctx, req, &resp);
      } else {
        inference::RepositoryModelUnloadRequest req;
        req.set_model_name("m");
        inference::RepositoryModelUnloadResponse resp;
        st = stub->RepositoryModelUnload(&ctx, req, &resp);
      }
      EXPECT_TRUE(st.ok()) << st.error_message();
    }
  }
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_GT(ok.load(), 0);
  EXPECT_EQ(Infer(*stub), grpc::StatusCode::OK);
  server->Stop();
}

TEST_F(ServerGrpcTest, StoppingWithCallsInFlightAnswersOrRefusesEveryCall) {
  for (int round = 0; round < 30; ++round) {
    auto server = Start();
    std::atomic<int> answered{0};
    std::vector<std::thread> clients;
    std::atomic<bool> started{false};
    std::mutex mu;
    std::string refusals;  // what the refused calls said, should none be answered
    for (int c = 0; c < 4; ++c) {
      clients.emplace_back([&] {
        auto stub = Stub(*server);
        for (int i = 0; i < 1000; ++i) {
          std::string message;
          const grpc::StatusCode code = Infer(*stub, &message);
          started = true;
          if (code != grpc::StatusCode::OK) {
            {
              std::lock_guard<std::mutex> lk(mu);
              refusals +=
                  "call " + std::to_string(i) + ": " + std::to_string(code) + " " + message + "; ";
            }
            // After the stop: refused, never an internal failure.
            EXPECT_TRUE(code == grpc::StatusCode::UNAVAILABLE ||
                        code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::NOT_FOUND)
                << code;
            return;
          }
          ++answered;
        }
      });
    }
    while (!started) std::this_thread::yield();
    server->Stop();
    for (auto& t : clients) t.join();
    EXPECT_GT(answered.load(), 0) << "round " << round << ": " << refusals;
  }
}

}  // namespace
}  // namespace lepton
