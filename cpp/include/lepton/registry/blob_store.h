// A content-addressed, crash-safe store of immutable artifacts: each blob lives at a path derived
// from its sha256, is written to a temporary file, fsynced and linked into place, and is stored
// once.
#pragma once

#include <sys/stat.h>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "lepton/common/buffer_pool.h"

namespace lepton {

// Hex-encoded sha256 of a byte string.
std::string Sha256Hex(std::string_view bytes);

// A blob that has been stored and is held against concurrent cleanup until the metadata that refers
// to it is committed. Releasing it (or destroying it) lets garbage collection see it again.
class BlobLease {
 public:
  BlobLease() = default;
  BlobLease(BlobLease&& other) noexcept;
  BlobLease& operator=(BlobLease&& other) noexcept;
  BlobLease(const BlobLease&) = delete;
  BlobLease& operator=(const BlobLease&) = delete;
  ~BlobLease();

  const std::string& sha256() const { return sha256_; }
  int64_t size() const { return size_; }
  // True when this write stored new bytes; false when an identical blob was already there.
  bool created() const { return created_; }
  void Release();

 private:
  friend class BlobStore;
  std::string sha256_;
  int64_t size_ = 0;
  bool created_ = false;
  int blob_fd_ = -1;  // shared lock on the stored blob
  int tmp_fd_ = -1;   // exclusive lock on the temporary file that records this write
  std::string tmp_path_;
};

// A blob's bytes mapped privately: the page cache's pages, shared with the file, not a copy, until
// a page is written (it is then copied for this process; the blob never changes).
class MappedBlob {
 public:
  MappedBlob() = default;
  MappedBlob(MappedBlob&& o) noexcept;
  MappedBlob& operator=(MappedBlob&& o) noexcept;
  MappedBlob(const MappedBlob&) = delete;
  MappedBlob& operator=(const MappedBlob&) = delete;
  ~MappedBlob();
  std::string_view bytes() const { return {static_cast<const char*>(data_), size_}; }

 private:
  friend class BlobStore;
  void* data_ = nullptr;
  size_t size_ = 0;
};

class BlobStore {
 public:
  // Checks a freshly written temporary file before it becomes visible; throws to refuse it.
  using Validator = std::function<void(const std::string& path)>;

  // `root` is created if missing.
  explicit BlobStore(std::string root);

  BlobLease PutFile(const std::string& source_path, const Validator& validate);
  BlobLease PutBytes(std::string_view bytes, const Validator& validate);

  std::string PathOf(const std::string& sha256) const;
  // Reads a blob and verifies its hash; IntegrityError when missing or corrupted. A blob this
  // store has already verified is not hashed again while its file is the same one, unchanged
  // (device, inode, size, modification time and change time): reloading a version costs a read.
  std::string Read(const std::string& sha256) const;
  // The same, mapped rather than read: for loading a model straight from the page cache.
  MappedBlob Map(const std::string& sha256) const;
  // The same, read into a buffer taken from `pool` (whose pages are in place when it is reused):
  // for loading versions again and again.
  std::shared_ptr<BufferPool::Buffer> ReadInto(const std::string& sha256, BufferPool& pool) const;

  enum class Health { kOk, kMissing, kCorrupted };
  Health Check(const std::string& sha256) const;

  // True while a writer holds the blob (it is being registered and not yet committed).
  bool Held(const std::string& sha256) const;

  // Every digest present in the store.
  std::vector<std::string> List() const;

  // Deletes the blob when no writer holds it and `unreferenced()`, asked while the blob is locked,
  // says nothing refers to it. Adds the bytes freed to `*freed` when given.
  bool RemoveIfUnused(const std::string& sha256, const std::function<bool()>& unreferenced,
                      int64_t* freed = nullptr);

  // Removes the temporary files of writers that died and returns the digests they were storing,
  // whose blobs the caller should offer to RemoveIfUnused.
  std::vector<std::string> RecoverAbandoned();

  const std::string& root() const { return root_; }

 private:
  BlobLease Put(const std::function<void(int fd, void* hash_ctx, int64_t* size)>& write,
                const Validator& validate);
  // Opens a blob for reading (IntegrityError when missing) and says what file it is.
  int OpenForRead(const std::string& sha256, struct stat* st) const;
  // IntegrityError unless `bytes` hash to `sha256`; skipped for a file already verified whose
  // identity `st` has not changed.
  void VerifyOnce(const std::string& sha256, const struct stat& st, std::string_view bytes) const;

  std::string root_;
  std::string tmp_dir_;
  // Blobs whose content was verified, with the identity of the file it was read from.
  mutable std::mutex verified_mu_;
  mutable std::map<std::string, std::array<int64_t, 6>> verified_;
};

}  // namespace lepton
