// Buffers of memory that go back to a pool when they are no longer used, so that the next buffer
// of about the same size is taken with its pages already in place. Reading an artifact into such
// a buffer costs one copy; mapping it costs building page tables, faulting on first touch and
// unmapping (with every CPU's TLB flushed) later. Where versions are loaded and unloaded all the
// time (under a memory budget), a buffer that is reused skips all of that.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace lepton {

class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  // Keeps at most `keep_bytes` of buffers that were given back, or the latest one alone when it is
  // larger; older ones beyond that go back to the system.
  static std::shared_ptr<BufferPool> Create(int64_t keep_bytes);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // Anonymous memory of `capacity` bytes (a multiple of the page size); given back to its pool
  // when destroyed, or to the system when the pool is gone or the process has forked since.
  class Buffer {
   public:
    ~Buffer();
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    char* data() const { return data_; }
    size_t size() const { return size_; }
    size_t capacity() const { return capacity_; }
    // Whether the buffer had been used before (its pages were in place).
    bool reused() const { return reused_; }

   private:
    friend class BufferPool;
    Buffer(std::weak_ptr<BufferPool> pool, char* data, size_t size, size_t capacity, bool reused);
    std::weak_ptr<BufferPool> pool_;
    char* data_;
    size_t size_;
    size_t capacity_;
    bool reused_;
  };

  // A buffer of at least `size` bytes: a kept one when one fits (at most an eighth larger than
  // needed, or 64 KiB), else new memory; std::bad_alloc when the system has none.
  std::shared_ptr<Buffer> Take(size_t size);

  struct Stats {
    int64_t taken = 0;       // buffers handed out
    int64_t reused = 0;      // of those, kept ones
    int64_t kept_bytes = 0;  // held now, unused
    int64_t kept_buffers = 0;
  };
  Stats stats() const;
  int64_t keep_bytes() const { return keep_bytes_; }

 private:
  explicit BufferPool(int64_t keep_bytes);
  void GiveBack(char* data, size_t capacity);

  const int64_t keep_bytes_;
  const uint64_t generation_;
  mutable std::mutex mu_;
  std::multimap<size_t, char*> kept_;  // by capacity
  std::vector<char*> order_;           // kept buffers, oldest first
  Stats stats_;
};

}  // namespace lepton
