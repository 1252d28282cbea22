// The one dtype table: signatures, the protocol codec and the registry all read it.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "lepton/common/dtypes.h"
#include "lepton/common/errors.h"
#include "lepton/common/signature.h"
#include "lepton/protocol/oip.h"

namespace lepton {
namespace {

TEST(DTypes, EveryRowIsFoundByItsNamesAndTheNamesAreUnique) {
  std::set<std::string> names, wires;
  for (const DTypeInfo* d = DTypesBegin(); d != DTypesEnd(); ++d) {
    EXPECT_EQ(&InfoOf(d->type), d);
    EXPECT_EQ(DTypeNamed(d->name), d);
    EXPECT_TRUE(names.insert(d->name).second) << d->name;
    if (*d->wire) {
      EXPECT_EQ(DTypeOnWire(d->wire), d);
      EXPECT_TRUE(wires.insert(d->wire).second) << d->wire;
    }
  }
  EXPECT_EQ(DTypeNamed("float"), nullptr);
  EXPECT_EQ(DTypeOnWire(""), nullptr);
  EXPECT_EQ(DTypeOnWire("FP8"), nullptr);
}

TEST(DTypes, TheCodecCarriesExactlyTheNumericRowsAndBytesWithTheirSizes) {
  for (const DTypeInfo* d = DTypesBegin(); d != DTypesEnd(); ++d) {
    const auto parsed = oip::ParseDataType(d->wire);
    EXPECT_EQ(parsed.has_value(), d->numeric_on_wire || d->type == DType::kString) << d->name;
    if (!parsed) continue;
    EXPECT_EQ(*parsed, d->type);
    EXPECT_STREQ(oip::DataTypeName(*parsed), d->wire);
    EXPECT_EQ(oip::ElementSize(*parsed), d->size);
  }
  EXPECT_EQ(oip::ParseDataType("BYTES"), DType::kString);
  EXPECT_FALSE(oip::ParseDataType("UINT64"));
  EXPECT_FALSE(oip::ParseDataType(""));
}

TEST(DTypes, SignaturesTakeTheTableNamesOnly) {
  Signature s;
  for (const DTypeInfo* d = DTypesBegin(); d != DTypesEnd(); ++d) {
    s.inputs.push_back({std::string("in_") + d->name, d->name, {-1}});
  }
  EXPECT_NO_THROW(ValidateSignature(s));
  s.inputs.push_back({"odd", "float", {1}});
  EXPECT_THROW(ValidateSignature(s), InvalidArgument);
}

}  // namespace
}  // namespace lepton
