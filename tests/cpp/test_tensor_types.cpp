// The dtype table's rows as LibTorch scalar types.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "lepton/common/errors.h"
#include "lepton/runtime/tensor_types.h"

namespace lepton {
namespace {

TEST(TensorTypes, EveryRowWithATensorTypeMapsBothWaysWithItsSize) {
  int mapped = 0;
  for (const DTypeInfo* d = DTypesBegin(); d != DTypesEnd(); ++d) {
    if (d->type == DType::kString) {
      EXPECT_THROW(ScalarTypeOf(d->type), InvalidArgument);
      continue;
    }
    const at::ScalarType s = ScalarTypeOf(d->type);
    EXPECT_EQ(DTypeOf(s), d->type) << d->name;
    EXPECT_EQ(DTypeName(s), d->name);
    EXPECT_EQ(static_cast<size_t>(c10::elementSize(s)), d->size) << d->name;
    ++mapped;
  }
  EXPECT_EQ(mapped, 12);
  EXPECT_EQ(DTypeOf(at::kQInt8), std::nullopt);
  EXPECT_EQ(DTypeName(at::kQInt8), "QInt8");
}

}  // namespace
}  // namespace lepton
