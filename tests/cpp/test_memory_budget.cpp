// The memory budget's bookkeeping, over items that stand for loaded versions.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "lepton/common/errors.h"
#include "lepton/control/memory_budget.h"

namespace lepton {
namespace {

using Clock = MemoryBudget::Clock;

// A version as the budget sees it: loaded or not, in use or not, required or not.
class Item : public BudgetItem {
 public:
  Item(std::string name, int64_t bytes) : name_(std::move(name)), bytes_(bytes) {}
  std::string budget_name() const override { return name_; }
  int64_t last_used_ns() const override { return used_at; }
  double frequency(int64_t, double) const override { return uses; }
  bool Evictable() const override {
    std::lock_guard<std::mutex> lk(mu);
    return loaded && !in_use && !required;
  }
  bool Required() const override { return required; }
  int64_t estimate_bytes() const override { return bytes_; }
  int64_t held_bytes() const override { return loaded ? bytes_ : 0; }
  int64_t Evict() override {
    std::lock_guard<std::mutex> lk(mu);
    if (!loaded || in_use || required) return 0;
    loaded = false;
    ++evictions;
    return bytes_;
  }
  // Loads under `b` as a slot does: reserve, then count as loaded.
  void Load(MemoryBudget& b, double wait_s = 0) {
    b.Reserve(*this, bytes_,
              Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(wait_s)));
    std::lock_guard<std::mutex> lk(mu);
    loaded = true;
  }

  mutable std::mutex mu;
  std::atomic<int64_t> used_at{0};
  std::atomic<double> uses{0};
  std::atomic<bool> loaded{false}, in_use{false}, required{false};
  int evictions = 0;

 private:
  std::string name_;
  int64_t bytes_;
};

TEST(MemoryBudget, ParsesSizesWithUnits) {
  EXPECT_EQ(ParseByteSize("512"), 512);
  EXPECT_EQ(ParseByteSize("512MB"), 512000000);
  EXPECT_EQ(ParseByteSize("2 GiB"), int64_t{2} << 30);
  EXPECT_EQ(ParseByteSize("100M"), 100 << 20);
  EXPECT_EQ(ParseByteSize("1.5kb"), 1500);
  EXPECT_EQ(ParseByteSize("1e9"), 1000000000);
  for (const char* bad : {"", "MB", "12 parsecs", "-5MB", "0", "1e30GB", "nan"}) {
    EXPECT_THROW(ParseByteSize(bad), InvalidArgument) << bad;
  }
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(4200000), "4.2 MB");
  EXPECT_THROW(MemoryBudget(0), InvalidArgument);
}

TEST(MemoryBudget, EvictsTheLeastRecentlyUsedIdleItemsAndNeverWhatIsRequiredOrInUse) {
  MemoryBudget b(300);
  std::vector<std::unique_ptr<Item>> items;
  for (int i = 0; i < 5; ++i) {
    items.push_back(std::make_unique<Item>("m:v" + std::to_string(i), 100));
    b.Attach(items.back().get());
  }
  for (int i = 0; i < 3; ++i) {
    items[i]->used_at = 10 + i;
    items[i]->Load(b);
  }
  EXPECT_EQ(b.stats().used, 300);
  // v0 is the least recently used, but in use; v1 is required: v2 goes.
  items[0]->in_use = true;
  items[1]->required = true;
  items[3]->Load(b);
  EXPECT_TRUE(items[0]->loaded && items[1]->loaded && items[3]->loaded);
  EXPECT_FALSE(items[2]->loaded);
  // Once idle, v0 is the oldest evictable.
  items[0]->in_use = false;
  items[3]->used_at = 50;
  items[4]->Load(b);
  EXPECT_FALSE(items[0]->loaded);
  EXPECT_TRUE(items[3]->loaded);
  const MemoryBudgetStats s = b.stats();
  EXPECT_EQ(s.used, 300);
  EXPECT_EQ(s.peak, 300);
  EXPECT_EQ(s.evictions, 2);
  for (auto& i : items) b.Detach(i.get());
}

TEST(MemoryBudget, FrequencyAwareEvictionKeepsTheOftenUsed) {
  EXPECT_EQ(EvictionNamed("lfu"), Eviction::kLfu);
  EXPECT_THROW(EvictionNamed("random"), InvalidArgument);
  MemoryBudget b(200, Eviction::kLfu);
  Item hot("m:hot", 100), rare("m:rare", 100), next("m:next", 100);
  for (Item* i : {&hot, &rare, &next}) b.Attach(i);
  hot.uses = 50;
  hot.used_at = 1;  // used long ago, but often: LRU would let it go
  rare.uses = 1;
  rare.used_at = 2;
  hot.Load(b);
  rare.Load(b);
  next.Load(b);
  EXPECT_TRUE(hot.loaded);
  EXPECT_FALSE(rare.loaded);
  for (Item* i : {&hot, &rare, &next}) b.Detach(i);
}

TEST(MemoryBudget, AReservationWaitsForAnItemInUseToGoIdle) {
  MemoryBudget b(200);
  Item a("m:a", 100), c("m:c", 100), d("m:d", 100);
  for (Item* i : {&a, &c, &d}) b.Attach(i);
  a.Load(b);
  c.Load(b);
  a.in_use = c.in_use = true;
  std::atomic<bool> loaded{false};
  std::thread t([&] {
    d.Load(b, 30);
    loaded = true;
  });
  // Nothing can go while both are in use; once one is idle the waiting load takes its place.
  while (b.stats().waits == 0) std::this_thread::yield();
  EXPECT_FALSE(loaded);
  c.in_use = false;
  b.NotifyIdle();
  t.join();
  EXPECT_TRUE(loaded);
  EXPECT_FALSE(c.loaded);
  EXPECT_TRUE(a.loaded);
  // Still in use past the deadline: Overloaded, and nothing is counted.
  d.in_use = true;
  Item e("m:e", 100);
  b.Attach(&e);
  EXPECT_THROW(e.Load(b, 0.05), Overloaded);
  EXPECT_EQ(b.stats().used, 200);
  EXPECT_EQ(b.stats().exhausted, 1);
  for (Item* i : {&a, &c, &d, &e}) b.Detach(i);
}

TEST(MemoryBudget, WhatMustStayIsCheckedAndNamedAndNeverWaitedFor) {
  MemoryBudget b(250);
  Item a("m:a", 100), c("m:c", 100), d("m:d", 100);
  for (Item* i : {&a, &c, &d}) b.Attach(i);
  EXPECT_THROW(b.CheckFits("m:huge", 251), InvalidArgument);
  try {
    b.CheckFits("m:huge", 300);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("m:huge"), std::string::npos) << e.what();
  }
  a.required = c.required = true;
  b.CheckRequired("pinning");
  d.required = true;
  try {
    b.CheckRequired("pinning m:d");
    FAIL();
  } catch (const InvalidArgument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("pinning m:d"), std::string::npos) << what;
    EXPECT_NE(what.find("m:a"), std::string::npos) << what;
    EXPECT_NE(what.find("300 B"), std::string::npos) << what;
  }
  d.required = false;
  a.Load(b);
  c.Load(b);
  // Required items hold the room: a load fails at once instead of waiting out its deadline.
  const auto t0 = Clock::now();
  EXPECT_THROW(d.Load(b, 30), Overloaded);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(10));
  for (Item* i : {&a, &c, &d}) b.Detach(i);
}

TEST(MemoryBudget, SettlingAMeasuredSizeAboveTheEstimateEvictsOthers) {
  MemoryBudget b(300);
  Item a("m:a", 100), c("m:c", 100), d("m:d", 100);
  for (Item* i : {&a, &c, &d}) b.Attach(i);
  a.Load(b);
  c.Load(b);
  d.Load(b);
  a.used_at = 1;
  c.used_at = 2;
  b.Settle(d, 100, 150);  // d measured more than its artifact's size
  EXPECT_FALSE(a.loaded);
  EXPECT_EQ(b.stats().used, 250);
  b.Release(100);
  EXPECT_EQ(b.stats().used, 150);
  for (Item* i : {&a, &c, &d}) b.Detach(i);
}

}  // namespace
}  // namespace lepton
