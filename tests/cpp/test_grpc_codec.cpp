// The gRPC messages to and from the codec's requests and responses (protocol/oip_grpc.h).
#include <gtest/gtest.h>

#include <cstring>

#include "inference.pb.h"
#include "lepton/common/errors.h"
#include "lepton/protocol/oip_grpc.h"

namespace lepton::oip {
namespace {

inference::ModelInferRequest RawFloats(int n) {
  inference::ModelInferRequest m;
  m.set_model_name("m");
  auto* in = m.add_inputs();
  in->set_name("x");
  in->set_datatype("FP32");
  in->add_shape(1);
  in->add_shape(n);
  std::string bytes(static_cast<size_t>(n) * 4, '\0');
  for (int i = 0; i < n; ++i) {
    const float v = static_cast<float>(i);
    std::memcpy(bytes.data() + i * 4, &v, 4);
  }
  m.add_raw_input_contents(std::move(bytes));
  return m;
}

TEST(GrpcCodec, RawContentsBecomeTheTensorsBytesWithoutACopy) {
  auto m = RawFloats(1024);
  const char* buffer = m.raw_input_contents(0).data();
  m.set_id("abc");
  (*m.mutable_parameters())["timeout"].set_int64_param(2'000'000);
  (*m.mutable_parameters())["key"].set_string_param("user");
  (*m.mutable_parameters())["priority"].set_uint64_param(1);
  InferRequest r = DecodeGrpcInferRequest(m);
  ASSERT_EQ(r.inputs.size(), 1u);
  EXPECT_EQ(r.inputs[0].data.data(), buffer);
  EXPECT_EQ(r.inputs[0].shape, (std::vector<int64_t>{1, 1024}));
  EXPECT_EQ(r.id, "abc");
  EXPECT_EQ(r.model_name, "m");
  EXPECT_EQ(r.key, "user");
  EXPECT_DOUBLE_EQ(*r.timeout_s, 2.0);
  EXPECT_EQ(*r.priority, 999999);  // Triton's 1 is the highest
}

TEST(GrpcCodec, TypedContentsArePackedAndRangeChecked) {
  inference::ModelInferRequest m;
  auto* in = m.add_inputs();
  in->set_name("x");
  in->set_datatype("INT16");
  in->add_shape(3);
  for (int v : {1, -2, 30000}) in->mutable_contents()->add_int_contents(v);
  InferRequest r = DecodeGrpcInferRequest(m);
  int16_t got[3];
  ASSERT_EQ(r.inputs[0].data.size(), sizeof got);
  std::memcpy(got, r.inputs[0].data.data(), sizeof got);
  EXPECT_EQ(got[0], 1);
  EXPECT_EQ(got[1], -2);
  EXPECT_EQ(got[2], 30000);
  in->mutable_contents()->set_int_contents(2, 40000);
  EXPECT_THROW(DecodeGrpcInferRequest(m), InvalidArgument);
}

TEST(GrpcCodec, SizesThatLieAreRefused) {
  auto m = RawFloats(4);
  m.mutable_raw_input_contents(0)->append("\0", 1);
  EXPECT_THROW(DecodeGrpcInferRequest(m), InvalidArgument);
  auto n = RawFloats(4);
  n.mutable_inputs(0)->set_shape(1, int64_t{1} << 40);
  EXPECT_THROW(DecodeGrpcInferRequest(n), InvalidArgument);
  auto k = RawFloats(4);
  k.add_inputs()->set_name("y");
  EXPECT_THROW(DecodeGrpcInferRequest(k), InvalidArgument);
  inference::ModelInferRequest empty;
  EXPECT_THROW(DecodeGrpcInferRequest(empty), InvalidArgument);
}

TEST(GrpcCodec, ResponsesCarryRawContentsAndTypedParameters) {
  InferResponse resp;
  resp.model = "m";
  resp.version = "v1";
  resp.id = "7";
  resp.parameters = R"({"lepton_versions":"v1","lepton_latency_ms":0.5,"n":3,"ok":true})";
  WireTensor t;
  t.name = "y";
  t.datatype = DataType::kInt64;
  t.shape = {2};
  t.data.assign(16, '\1');
  resp.outputs.push_back(t);
  inference::ModelInferResponse out;
  EncodeGrpcInferResponse(std::move(resp), &out);
  EXPECT_EQ(out.model_name(), "m");
  EXPECT_EQ(out.model_version(), "v1");
  EXPECT_EQ(out.id(), "7");
  ASSERT_EQ(out.outputs_size(), 1);
  EXPECT_EQ(out.outputs(0).datatype(), "INT64");
  EXPECT_EQ(out.raw_output_contents(0), std::string(16, '\1'));
  EXPECT_EQ(out.parameters().at("lepton_versions").string_param(), "v1");
  EXPECT_DOUBLE_EQ(out.parameters().at("lepton_latency_ms").double_param(), 0.5);
  EXPECT_TRUE(out.parameters().at("ok").bool_param());
  EXPECT_EQ(out.parameters().at("n").uint64_param(), 3u);
}

}  // namespace
}  // namespace lepton::oip
