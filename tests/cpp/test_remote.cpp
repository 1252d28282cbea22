// A version served by an Open Inference Protocol endpoint (a real lepton Server on a local port)
// as a member of a deployment: answers, policies, errors, deadlines and ejection.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "engine_models.h"
#include "engine_registry.h"
#include "lepton/common/errors.h"
#include "lepton/policy/policies.h"
#include "lepton/runtime/deployment.h"
#include "lepton/server/server.h"
#include "test_util.h"

namespace lepton {
namespace {

using testing::AddN;
using testing::TempDir;

class RemoteTest : public ::testing::Test {
 protected:
  // A remote endpoint publishes its inputs from the version's signature.
  void Register(const std::string& label, const std::string& bytes) {
    RegisterOptions r;
    r.version = label;
    r.signature = Signature{{TensorSpec{"x", "float32", {-1, -1}}}, {}};
    far_->RegisterBytes("m", bytes, r);
  }
  void SetUp() override {
    far_ = testing::EngineRegistry(dir_ / "far");
    Register("v3", AddN(3));
    Register("bad", testing::FailsOnNegative());
    Register("slow", testing::Sleeps());
    testing::RegisterLabelled(*far_, "m", "plain", AddN(0));
    near_ = testing::EngineRegistry(dir_ / "near");
    testing::RegisterLabelled(*near_, "m", "v1", AddN(1));
    ServerOptions o;
    o.port = 0;
    o.token = "t";
    o.serve_all = false;
    o.models.push_back(ServedModel{"m", std::nullopt, {"v3", "bad", "slow"}, "", ""});
    o.deployment.threads = 2;
    server_ = std::make_unique<Server>(far_, o);
    server_->Start();
  }
  DeploymentOptions Opts(const std::string& label, const std::string& version) const {
    DeploymentOptions o;
    o.threads = 2;
    o.adaptive = false;
    RemoteOptions r;
    r.url = "http://127.0.0.1:" + std::to_string(server_->port());
    r.model = "m";
    r.version = version;
    o.remotes[label] = r;
    return o;
  }
  static PredictOptions Pin(const std::string& v) {
    PredictOptions p;
    p.context.version = v;
    return p;
  }

  TempDir dir_;
  std::shared_ptr<Registry> far_, near_;
  std::unique_ptr<Server> server_;
};

TEST_F(RemoteTest, ARemoteVersionAnswersAndTakesPartInAnEnsemble) {
  Deployment d(near_, "m", {"v1", "r3"}, Opts("r3", "v3"));
  EXPECT_TRUE(torch::equal(d.Predict({torch::zeros({2, 2})}, Pin("r3")).outputs[0],
                           torch::full({2, 2}, 3.0)));
  const DeploymentStatus st = d.Status();
  EXPECT_EQ(st.versions[1].placement, "remote");
  EXPECT_EQ(st.versions[1].succeeded, 1);
  d.SetPolicy(std::make_shared<EnsemblePolicy>(std::vector<std::string>{"v1", "r3"},
                                               std::vector<double>{0.5, 0.5}));
  Prediction p = d.Predict({torch::zeros({2, 2})});
  EXPECT_TRUE(torch::allclose(p.outputs[0], torch::full({2, 2}, 2.0)));
}

TEST_F(RemoteTest, ErrorsAndDeadlinesComeBackTypedAndADeadEndpointIsEjected) {
  DeploymentOptions o = Opts("bad", "bad");
  RemoteOptions slow = o.remotes["bad"];
  slow.version = "slow";
  o.remotes["slow"] = slow;
  o.remotes["bad"].eject_after = 2;
  o.remotes["bad"].retries = 0;
  Deployment d(near_, "m", {"v1", "bad", "slow"}, o);
  EXPECT_THROW(d.Predict({-torch::ones({1, 2})}, Pin("bad")), ModelError);
  // A model error is an answer: the endpoint is not ejected for it.
  EXPECT_TRUE(torch::equal(d.Predict({torch::ones({1, 2})}, Pin("bad")).outputs[0],
                           torch::full({1, 2}, 2.0)));
  PredictOptions quick = Pin("slow");
  quick.timeout_s = 0.2;
  EXPECT_THROW(d.Predict({torch::full({1, 1}, 3000.0)}, quick), Timeout);
  server_->Stop();
  EXPECT_THROW(d.Predict({torch::ones({1, 2})}, Pin("bad")), Unavailable);
  EXPECT_THROW(d.Predict({torch::ones({1, 2})}, Pin("bad")), Unavailable);
  try {
    d.Predict({torch::ones({1, 2})}, Pin("bad"));
    FAIL() << "a dead endpoint answered";
  } catch (const Unavailable& e) {
    EXPECT_NE(std::string(e.what()).find("ejected after 2 failures in a row"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(d.Predict({torch::zeros({1})}, Pin("v1")).outputs[0].item<float>(), 1);
}

TEST_F(RemoteTest, AnEndpointThatListsNoInputsIsRefusedAtLoad) {
  server_->Stop();
  ServerOptions o;
  o.port = 0;
  o.token = "t";
  o.serve_all = false;
  o.models.push_back(ServedModel{"m", std::nullopt, {"plain"}, "", ""});
  server_ = std::make_unique<Server>(far_, o);
  server_->Start();
  try {
    Deployment d(near_, "m", {"p"}, Opts("p", "plain"));
    FAIL() << "loaded";
  } catch (const LoadError& e) {
    EXPECT_NE(std::string(e.what()).find("lists no inputs in its metadata"), std::string::npos)
        << e.what();
  }
}

TEST(RemoteOptionsJson, RemotesAreReadAndBadOnesRefused) {
  DeploymentOptions o = DeploymentOptionsFromJson(
      R"({"remotes": {"r3": {"url": "http://h:8000", "model": "m", "version": "v3",
                             "headers": {"Authorization": "Bearer x"}, "retries": 1,
                             "eject_after": 4, "eject_for": 2.5, "binary": false}}})");
  const RemoteOptions& r = o.remotes.at("r3");
  EXPECT_EQ(r.url, "http://h:8000");
  EXPECT_EQ(r.version, "v3");
  EXPECT_EQ(r.headers.at("Authorization"), "Bearer x");
  EXPECT_EQ(r.retries, 1);
  EXPECT_EQ(r.eject_after, 4);
  EXPECT_EQ(r.eject_s, 2.5);
  EXPECT_FALSE(r.binary);
  EXPECT_THROW(DeploymentOptionsFromJson(R"({"remotes": {"r": {"model": "m"}}})"), InvalidArgument);
  EXPECT_THROW(
      DeploymentOptionsFromJson(R"({"remotes": {"r": {"url": "u", "model": "m", "x": 1}}})"),
      InvalidArgument);
  EXPECT_THROW(DeploymentOptionsFromJson(R"({"remotes": {"a b": {"url": "u", "model": "m"}}})"),
               InvalidArgument);
}

}  // namespace
}  // namespace lepton
