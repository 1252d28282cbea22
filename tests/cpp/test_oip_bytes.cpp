// BYTES tensors in the protocol codec: JSON strings, length-prefixed binary data and gRPC
// contents, both ways, and data that lies about its elements.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "inference.pb.h"
#include "lepton/common/errors.h"
#include "lepton/protocol/oip.h"
#include "lepton/protocol/oip_grpc.h"

namespace lepton::oip {
namespace {

std::string Serialized(const std::vector<std::string>& values) {
  std::string out;
  for (const auto& v : values) AppendBytesElement(out, v);
  return out;
}

std::vector<std::string> Elements(const WireTensor& t) {
  const auto views = SplitBytesElements(t.data, t.elements(), t.name);
  return {views.begin(), views.end()};
}

TEST(OipBytes, JsonStringsFlatAndNested) {
  const InferRequest r = DecodeInferRequest(R"({"inputs": [
      {"name": "a", "shape": [3], "datatype": "BYTES", "data": ["x", "", "h\u00e9\n"]},
      {"name": "b", "shape": [2, 1], "datatype": "BYTES", "data": [["p"], ["q"]]}]})");
  ASSERT_EQ(r.inputs.size(), 2u);
  EXPECT_EQ(r.inputs[0].datatype, DataType::kString);
  EXPECT_EQ(Elements(r.inputs[0]), (std::vector<std::string>{"x", "", "h\xc3\xa9\n"}));
  EXPECT_EQ(Elements(r.inputs[1]), (std::vector<std::string>{"p", "q"}));
  const char* bad[] = {
      R"({"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": [1]}]})",
      R"({"inputs": [{"name": "a", "shape": [2], "datatype": "BYTES", "data": ["x"]}]})",
      R"({"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": [null]}]})",
  };
  for (const char* body : bad) EXPECT_THROW(DecodeInferRequest(body), InvalidArgument) << body;
}

TEST(OipBytes, BinaryDataIsLengthPrefixedAndChecked) {
  const std::string data = Serialized({"ab", std::string("\0\xff", 2)});
  const std::string head = R"({"inputs": [{"name": "a", "shape": [2], "datatype": "BYTES",
      "parameters": {"binary_data_size": )" +
                           std::to_string(data.size()) + "}}]}";
  const InferRequest r = DecodeInferRequest(head + data, {}, head.size());
  EXPECT_EQ(r.inputs[0].data, data);
  EXPECT_EQ(Elements(r.inputs[0]), (std::vector<std::string>{"ab", std::string("\0\xff", 2)}));
  // One element fewer than the shape holds, one byte short, one byte over.
  for (const std::string& lie : {Serialized({"ab"}), data.substr(0, data.size() - 1), data + "z"}) {
    const std::string h = R"({"inputs": [{"name": "a", "shape": [2], "datatype": "BYTES",
        "parameters": {"binary_data_size": )" +
                          std::to_string(lie.size()) + "}}]}";
    EXPECT_THROW(DecodeInferRequest(h + lie, {}, h.size()), InvalidArgument);
  }
  // A count far beyond the data is refused without reserving for it.
  EXPECT_THROW(SplitBytesElements("", int64_t{1} << 40, "a"), InvalidArgument);
}

TEST(OipBytes, ResponsesAsJsonStringsOrBinaryData) {
  InferResponse resp;
  resp.model = "m";
  resp.version = "v1";
  WireTensor t;
  t.name = "out";
  t.datatype = DataType::kString;
  t.shape = {2};
  t.data = Serialized({"\xc3\xa9t\xc3\xa9", "\"quoted\""});
  resp.outputs.push_back(t);
  const auto j = nlohmann::json::parse(EncodeInferResponse(resp));
  EXPECT_EQ(j["outputs"][0]["datatype"], "BYTES");
  EXPECT_EQ(j["outputs"][0]["data"], (nlohmann::json{"\xc3\xa9t\xc3\xa9", "\"quoted\""}));
  // Bytes that are not UTF-8 cannot be JSON strings: refused, not altered; as binary they go.
  resp.outputs[0].data = Serialized({"ok", "\xff"});
  EXPECT_THROW(EncodeInferResponse(resp), InvalidArgument);
  resp.outputs[0].binary = true;
  std::optional<size_t> json_length;
  const std::string body = EncodeInferResponse(resp, &json_length);
  ASSERT_TRUE(json_length);
  EXPECT_EQ(body.substr(*json_length), resp.outputs[0].data);
  EXPECT_EQ(nlohmann::json::parse(
                body.substr(0, *json_length))["outputs"][0]["parameters"]["binary_data_size"],
            resp.outputs[0].data.size());
}

TEST(OipBytes, GrpcBytesContentsAndRawContents) {
  inference::ModelInferRequest m;
  auto* in = m.add_inputs();
  in->set_name("a");
  in->set_datatype("BYTES");
  in->add_shape(2);
  in->mutable_contents()->add_bytes_contents("x");
  in->mutable_contents()->add_bytes_contents(std::string("\0y", 2));
  InferRequest r = DecodeGrpcInferRequest(m);
  EXPECT_EQ(Elements(r.inputs[0]), (std::vector<std::string>{"x", std::string("\0y", 2)}));
  in->mutable_contents()->add_bytes_contents("z");  // three for a shape of two
  EXPECT_THROW(DecodeGrpcInferRequest(m), InvalidArgument);
  in->clear_contents();
  m.add_raw_input_contents(Serialized({"raw", "data"}));
  r = DecodeGrpcInferRequest(m);
  EXPECT_EQ(Elements(r.inputs[0]), (std::vector<std::string>{"raw", "data"}));
  m.set_raw_input_contents(0, Serialized({"raw"}));
  EXPECT_THROW(DecodeGrpcInferRequest(m), InvalidArgument);

  InferResponse resp;
  WireTensor t;
  t.name = "out";
  t.datatype = DataType::kString;
  t.shape = {1};
  t.data = Serialized({"hello"});
  resp.outputs.push_back(t);
  inference::ModelInferResponse out;
  EncodeGrpcInferResponse(std::move(resp), &out);
  EXPECT_EQ(out.outputs(0).datatype(), "BYTES");
  EXPECT_EQ(out.raw_output_contents(0), Serialized({"hello"}));
}

}  // namespace
}  // namespace lepton::oip
