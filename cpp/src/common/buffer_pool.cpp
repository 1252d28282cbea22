#include "lepton/common/buffer_pool.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <new>

#include "lepton/common/process.h"

namespace lepton {
namespace {

constexpr size_t kSlack = 64 * 1024;
#ifdef MADV_POPULATE_WRITE
constexpr int kPopulateWrite = MADV_POPULATE_WRITE;
#else
constexpr int kPopulateWrite = 23;
#endif

size_t PageRounded(size_t size) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return std::max(page, (size + page - 1) / page * page);
}

}  // namespace

std::shared_ptr<BufferPool> BufferPool::Create(int64_t keep_bytes) {
  return std::shared_ptr<BufferPool>(new BufferPool(keep_bytes));
}

BufferPool::BufferPool(int64_t keep_bytes)
    : keep_bytes_(std::max<int64_t>(0, keep_bytes)), generation_(ForkGeneration()) {}

BufferPool::~BufferPool() {
  for (const auto& [capacity, data] : kept_) ::munmap(data, capacity);
}

BufferPool::Buffer::Buffer(std::weak_ptr<BufferPool> pool, char* data, size_t size, size_t capacity,
                           bool reused)
    : pool_(std::move(pool)), data_(data), size_(size), capacity_(capacity), reused_(reused) {}

BufferPool::Buffer::~Buffer() {
  if (auto pool = pool_.lock()) {
    pool->GiveBack(data_, capacity_);
  } else {
    ::munmap(data_, capacity_);
  }
}

std::shared_ptr<BufferPool::Buffer> BufferPool::Take(size_t size) {
  const size_t capacity = PageRounded(size);
  char* data = nullptr;
  size_t found = 0;
  if (ForkGeneration() == generation_) {
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.taken;
    auto it = kept_.lower_bound(capacity);
    if (it != kept_.end() && it->first <= capacity + std::max(kSlack, capacity / 8)) {
      found = it->first;
      data = it->second;
      kept_.erase(it);
      order_.erase(std::find(order_.begin(), order_.end(), data));
      stats_.kept_bytes -= static_cast<int64_t>(found);
      --stats_.kept_buffers;
      ++stats_.reused;
    }
  }
  if (data) {
    return std::shared_ptr<Buffer>(new Buffer(weak_from_this(), data, size, found, true));
  }
  void* p = ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  // Its pages are put in place now, in one call: faulting them in one by one later, inside the
  // kernel's copy into the buffer, costs several times more. (A kernel before 5.14 refuses the
  // advice; the pages then come at first touch.)
  (void)::madvise(p, capacity, kPopulateWrite);
  return std::shared_ptr<Buffer>(
      new Buffer(weak_from_this(), static_cast<char*>(p), size, capacity, false));
}

void BufferPool::GiveBack(char* data, size_t capacity) {
  // A forked child does not touch a lock its parent's threads may have held at the fork.
  if (ForkGeneration() != generation_) {
    ::munmap(data, capacity);
    return;
  }
  std::vector<std::pair<char*, size_t>> gone;
  {
    std::lock_guard<std::mutex> lk(mu_);
    kept_.emplace(capacity, data);
    order_.push_back(data);
    stats_.kept_bytes += static_cast<int64_t>(capacity);
    ++stats_.kept_buffers;
    // The buffer just given back stays even when it alone is over the limit: the next load most
    // likely takes it.
    while (stats_.kept_bytes > keep_bytes_ && order_.size() > 1) {
      char* oldest = order_.front();
      order_.erase(order_.begin());
      auto it = std::find_if(kept_.begin(), kept_.end(),
                             [&](const auto& e) { return e.second == oldest; });
      gone.emplace_back(oldest, it->first);
      stats_.kept_bytes -= static_cast<int64_t>(it->first);
      --stats_.kept_buffers;
      kept_.erase(it);
    }
  }
  for (const auto& [p, n] : gone) ::munmap(p, n);
}

BufferPool::Stats BufferPool::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

}  // namespace lepton
