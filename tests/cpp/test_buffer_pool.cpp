// Buffers given back to a pool are taken again with their pages in place, the pool keeps no more
// than it may, and buffers outlive their pool safely.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <vector>

#include "lepton/common/buffer_pool.h"

namespace lepton {
namespace {

constexpr size_t kMiB = 1 << 20;

TEST(BufferPool, AGivenBackBufferIsTakenAgainForAboutTheSameSize) {
  auto pool = BufferPool::Create(16 * kMiB);
  char* first = nullptr;
  {
    auto b = pool->Take(4 * kMiB + 123);
    EXPECT_FALSE(b->reused());
    EXPECT_EQ(b->size(), 4 * kMiB + 123);
    EXPECT_GE(b->capacity(), b->size());
    std::memset(b->data(), 7, b->size());  // writable, all of it
    first = b->data();
  }
  EXPECT_EQ(pool->stats().kept_buffers, 1);
  {
    // A little smaller: the kept buffer fits.
    auto b = pool->Take(4 * kMiB);
    EXPECT_TRUE(b->reused());
    EXPECT_EQ(b->data(), first);
    EXPECT_EQ(b->size(), 4 * kMiB);
    EXPECT_EQ(pool->stats().kept_buffers, 0);
  }
  {
    // Far smaller: the kept buffer would waste most of itself, so new memory is taken.
    auto b = pool->Take(kMiB);
    EXPECT_FALSE(b->reused());
    // Larger than any kept buffer: new memory too.
    auto c = pool->Take(5 * kMiB);
    EXPECT_FALSE(c->reused());
  }
  const BufferPool::Stats s = pool->stats();
  EXPECT_EQ(s.taken, 4);
  EXPECT_EQ(s.reused, 1);
}

TEST(BufferPool, KeepsNoMoreThanItsLimitButAlwaysTheLatest) {
  auto pool = BufferPool::Create(5 * kMiB);
  std::vector<std::shared_ptr<BufferPool::Buffer>> held;
  for (int i = 0; i < 4; ++i) held.push_back(pool->Take(2 * kMiB));
  held.clear();  // given back oldest first: only the two latest fit under 5 MiB
  BufferPool::Stats s = pool->stats();
  EXPECT_EQ(s.kept_buffers, 2);
  EXPECT_EQ(s.kept_bytes, static_cast<int64_t>(4 * kMiB));

  // One buffer larger than the whole limit is still kept, alone: the next load most likely
  // takes it.
  auto small = BufferPool::Create(kMiB);
  char* big = nullptr;
  { big = small->Take(3 * kMiB)->data(); }
  s = small->stats();
  EXPECT_EQ(s.kept_buffers, 1);
  EXPECT_EQ(small->Take(3 * kMiB)->data(), big);
}

TEST(BufferPool, ABufferOutlivesItsPool) {
  auto pool = BufferPool::Create(8 * kMiB);
  auto b = pool->Take(kMiB);
  std::memset(b->data(), 1, b->size());
  pool.reset();
  EXPECT_EQ(b->data()[kMiB - 1], 1);
  b.reset();  // goes back to the system, not to a pool that is gone
}

TEST(BufferPool, ThreadsTakeAndGiveBackConcurrently) {
  auto pool = BufferPool::Create(32 * kMiB);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        auto b = pool->Take((1 + (i + t) % 3) * 256 * 1024);
        // The buffer is this thread's alone while it holds it.
        std::memset(b->data(), t, b->size());
        for (size_t k = 0; k < b->size(); k += 4096) ASSERT_EQ(b->data()[k], static_cast<char>(t));
      }
    });
  }
  for (auto& t : threads) t.join();
  const BufferPool::Stats s = pool->stats();
  EXPECT_EQ(s.taken, 8 * 200);
  EXPECT_GT(s.reused, 0);
  EXPECT_LE(s.kept_bytes, static_cast<int64_t>(32 * kMiB));
}

}  // namespace
}  // namespace lepton
