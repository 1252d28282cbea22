#include "lepton/registry/blob_store.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <utility>

#include "lepton/common/errors.h"
#include "lepton/common/process.h"

namespace fs = std::filesystem;

namespace lepton {
namespace {

#ifdef MADV_POPULATE_READ
constexpr int kPopulateRead = MADV_POPULATE_READ;
#else
constexpr int kPopulateRead = 22;  // Linux's value, for headers older than the kernel
#endif

constexpr size_t kChunk = 1 << 20;
constexpr const char* kPartialSuffix = ".partial";
constexpr const char* kPendingSuffix = ".pending";

[[noreturn]] void ThrowErrno(const std::string& what) {
  const int e = errno;
  throw StorageError(what + ": " + std::strerror(e), e);
}

// Closes a descriptor when the scope ends.
struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

// Reads up to `size` bytes from the start of `fd` into `into`; fewer only at the end of the file.
size_t ReadFully(int fd, char* into, size_t size, const std::string& path) {
  size_t done = 0;
  while (done < size) {
    const ssize_t r = ::pread(fd, into + done, size - done, static_cast<off_t>(done));
    if (r < 0) {
      if (errno == EINTR) continue;
      ThrowErrno("cannot read " + path);
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return done;
}

struct DigestDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using Digest = std::unique_ptr<EVP_MD_CTX, DigestDeleter>;

Digest NewDigest() {
  Digest ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    throw StorageError("cannot initialise sha256");
  }
  return ctx;
}

std::string FinishHex(EVP_MD_CTX* ctx) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx, md, &len) != 1) throw StorageError("cannot finish sha256");
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned int i = 0; i < len; ++i) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 0xf];
  }
  return out;
}

bool IsHexDigest(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

void CloseFd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

void WriteAll(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      ThrowErrno("cannot write artifact");
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
}

void FsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) ThrowErrno("cannot open directory " + dir);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) ThrowErrno("cannot fsync directory " + dir);
}

std::string RandomToken() { return RandomHex(12); }

// Hashes an open file from its start.
std::string HashFd(int fd, int64_t* size) {
  Digest ctx = NewDigest();
  std::string buf(kChunk, '\0');
  int64_t total = 0;
  for (;;) {
    ssize_t r = ::read(fd, buf.data(), buf.size());
    if (r < 0) {
      if (errno == EINTR) continue;
      ThrowErrno("cannot read artifact");
    }
    if (r == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(r));
    total += r;
  }
  if (size) *size = total;
  return FinishHex(ctx.get());
}

}  // namespace

std::string Sha256Hex(std::string_view bytes) {
  Digest ctx = NewDigest();
  EVP_DigestUpdate(ctx.get(), bytes.data(), bytes.size());
  return FinishHex(ctx.get());
}

BlobLease::BlobLease(BlobLease&& other) noexcept { *this = std::move(other); }

BlobLease& BlobLease::operator=(BlobLease&& other) noexcept {
  if (this != &other) {
    Release();
    sha256_ = std::move(other.sha256_);
    size_ = other.size_;
    created_ = other.created_;
    blob_fd_ = std::exchange(other.blob_fd_, -1);
    tmp_fd_ = std::exchange(other.tmp_fd_, -1);
    tmp_path_ = std::move(other.tmp_path_);
    other.tmp_path_.clear();
  }
  return *this;
}

BlobLease::~BlobLease() { Release(); }

void BlobLease::Release() {
  if (!tmp_path_.empty()) ::unlink(tmp_path_.c_str());
  tmp_path_.clear();
  CloseFd(tmp_fd_);
  CloseFd(blob_fd_);
}

BlobStore::BlobStore(std::string root) : root_(std::move(root)), tmp_dir_(root_ + "/tmp") {
  std::error_code ec;
  fs::create_directories(tmp_dir_, ec);
  if (ec)
    throw StorageError("cannot create blob store at " + root_ + ": " + ec.message(), ec.value());
  fs::create_directories(root_ + "/sha256", ec);
  if (ec)
    throw StorageError("cannot create blob store at " + root_ + ": " + ec.message(), ec.value());
}

std::string BlobStore::PathOf(const std::string& sha256) const {
  return root_ + "/sha256/" + sha256.substr(0, 2) + "/" + sha256;
}

BlobLease BlobStore::PutFile(const std::string& source_path, const Validator& validate) {
  struct stat st {};
  if (::stat(source_path.c_str(), &st) != 0) {
    if (errno == ENOENT) throw NotFound("artifact file '" + source_path + "' does not exist");
    ThrowErrno("cannot read artifact file '" + source_path + "'");
  }
  if (!S_ISREG(st.st_mode)) {
    throw InvalidArgument("artifact '" + source_path + "' is not a regular file");
  }
  int src = ::open(source_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (src < 0) ThrowErrno("cannot open artifact file '" + source_path + "'");
  const FdCloser closer{src};
  return Put(
      [src](int fd, void* hash_ctx, int64_t* size) {
        std::string buf(kChunk, '\0');
        for (;;) {
          ssize_t r = ::read(src, buf.data(), buf.size());
          if (r < 0) {
            if (errno == EINTR) continue;
            ThrowErrno("cannot read artifact");
          }
          if (r == 0) break;
          EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(hash_ctx), buf.data(), static_cast<size_t>(r));
          WriteAll(fd, buf.data(), static_cast<size_t>(r));
          *size += r;
        }
      },
      validate);
}

BlobLease BlobStore::PutBytes(std::string_view bytes, const Validator& validate) {
  return Put(
      [bytes](int fd, void* hash_ctx, int64_t* size) {
        EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(hash_ctx), bytes.data(), bytes.size());
        WriteAll(fd, bytes.data(), bytes.size());
        *size = static_cast<int64_t>(bytes.size());
      },
      validate);
}

BlobLease BlobStore::Put(const std::function<void(int, void*, int64_t*)>& write,
                         const Validator& validate) {
  BlobLease lease;
  const std::string token = RandomToken();
  // The bytes go into an anonymous inode that is locked before it gets a name, so a collector can
  // never mistake a live write for a dead one. Filesystems without O_TMPFILE get a named file.
  std::string partial;
  lease.tmp_fd_ = ::open(tmp_dir_.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
  if (lease.tmp_fd_ < 0) {
    partial = tmp_dir_ + "/" + token + kPartialSuffix;
    lease.tmp_fd_ = ::open(partial.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (lease.tmp_fd_ < 0) ThrowErrno("cannot create temporary file in " + tmp_dir_);
    lease.tmp_path_ = partial;  // from here on, Release() cleans up on any throw
  }
  if (::flock(lease.tmp_fd_, LOCK_EX) != 0) ThrowErrno("cannot lock temporary file");

  Digest ctx = NewDigest();
  int64_t size = 0;
  write(lease.tmp_fd_, ctx.get(), &size);
  // Stored artifacts are immutable; read-only permissions make accidental edits fail loudly.
  if (::fchmod(lease.tmp_fd_, 0444) != 0) ThrowErrno("cannot set artifact permissions");
  if (::fsync(lease.tmp_fd_) != 0) ThrowErrno("cannot fsync artifact");
  lease.sha256_ = FinishHex(ctx.get());
  lease.size_ = size;
  const std::string fd_path = "/proc/self/fd/" + std::to_string(lease.tmp_fd_);
  if (validate) validate(partial.empty() ? fd_path : partial);

  // The pending name records which digest this write is storing, so that a dead writer's blob can
  // be found and collected on the next open.
  const std::string pending = tmp_dir_ + "/" + lease.sha256_ + "." + token + kPendingSuffix;
  if (partial.empty()) {
    if (::linkat(AT_FDCWD, fd_path.c_str(), AT_FDCWD, pending.c_str(), AT_SYMLINK_FOLLOW) != 0) {
      ThrowErrno("cannot name temporary file " + pending);
    }
  } else if (::rename(partial.c_str(), pending.c_str()) != 0) {
    ThrowErrno("cannot rename " + partial);
  }
  lease.tmp_path_ = pending;

  const std::string target = PathOf(lease.sha256_);
  const std::string dir = target.substr(0, target.rfind('/'));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw StorageError("cannot create " + dir + ": " + ec.message(), ec.value());

  for (int attempt = 0; attempt < 100; ++attempt) {
    if (::link(pending.c_str(), target.c_str()) == 0) {
      FsyncDir(dir);
      // Downgrade so that writers of identical bytes can share the blob without waiting.
      if (::flock(lease.tmp_fd_, LOCK_SH) != 0) ThrowErrno("cannot lock " + target);
      // The page cache holds the blob in the small pieces it was written in. Dropped now, it is
      // read back at first use in large ones (up to 2 MB where the filesystem allows), which a
      // load copies several times faster and a mapping covers with one entry per 2 MB.
      (void)::posix_fadvise(lease.tmp_fd_, 0, 0, POSIX_FADV_DONTNEED);
      lease.created_ = true;
      return lease;
    }
    if (errno != EEXIST) ThrowErrno("cannot store artifact at " + target);
    // Identical bytes are already stored: hold them shared, unless a collector removed them in
    // between, in which case the link is retried.
    int fd = ::open(target.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) continue;
      ThrowErrno("cannot open " + target);
    }
    if (::flock(fd, LOCK_SH) != 0) {
      ::close(fd);
      ThrowErrno("cannot lock " + target);
    }
    struct stat held {
    }, named{};
    if (::fstat(fd, &held) == 0 && ::stat(target.c_str(), &named) == 0 &&
        held.st_ino == named.st_ino && held.st_dev == named.st_dev) {
      lease.blob_fd_ = fd;
      lease.created_ = false;
      return lease;
    }
    ::close(fd);
  }
  throw StorageError("cannot store artifact " + lease.sha256_ + ": it keeps being removed");
}

int BlobStore::OpenForRead(const std::string& sha256, struct stat* st) const {
  const std::string path = PathOf(sha256);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) {
      throw IntegrityError("artifact " + sha256 + " is missing from the blob store (" + path + ")");
    }
    ThrowErrno("cannot open artifact " + path);
  }
  if (::fstat(fd, st) != 0) {
    const int e = errno;
    ::close(fd);
    errno = e;
    ThrowErrno("cannot stat " + path);
  }
  return fd;
}

void BlobStore::VerifyOnce(const std::string& sha256, const struct stat& st,
                           std::string_view bytes) const {
  const std::array<int64_t, 6> identity = {
      static_cast<int64_t>(st.st_dev),
      static_cast<int64_t>(st.st_ino),
      static_cast<int64_t>(st.st_size),
      static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
      static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec,
      static_cast<int64_t>(bytes.size())};
  {
    std::lock_guard<std::mutex> lk(verified_mu_);
    auto it = verified_.find(sha256);
    if (it != verified_.end() && it->second == identity) return;
  }
  const std::string actual = Sha256Hex(bytes);
  std::lock_guard<std::mutex> lk(verified_mu_);
  if (actual != sha256) {
    verified_.erase(sha256);
    throw IntegrityError("artifact " + sha256 + " is corrupted: its content hashes to " + actual);
  }
  verified_[sha256] = identity;
}

std::string BlobStore::Read(const std::string& sha256) const {
  struct stat st {};
  const int fd = OpenForRead(sha256, &st);
  const FdCloser closer{fd};
  std::string bytes(static_cast<size_t>(st.st_size), '\0');
  bytes.resize(ReadFully(fd, bytes.data(), bytes.size(), PathOf(sha256)));
  VerifyOnce(sha256, st, bytes);
  return bytes;
}

std::shared_ptr<BufferPool::Buffer> BlobStore::ReadInto(const std::string& sha256,
                                                        BufferPool& pool) const {
  struct stat st {};
  const int fd = OpenForRead(sha256, &st);
  const FdCloser closer{fd};
  auto buffer = pool.Take(static_cast<size_t>(st.st_size));
  if (ReadFully(fd, buffer->data(), buffer->size(), PathOf(sha256)) < buffer->size()) {
    throw IntegrityError("artifact " + sha256 + " is shorter than when it was opened");
  }
  VerifyOnce(sha256, st, std::string_view(buffer->data(), buffer->size()));
  return buffer;
}

MappedBlob::MappedBlob(MappedBlob&& o) noexcept : data_(o.data_), size_(o.size_) {
  o.data_ = nullptr;
  o.size_ = 0;
}

MappedBlob& MappedBlob::operator=(MappedBlob&& o) noexcept {
  if (this != &o) {
    if (data_) ::munmap(data_, size_);
    data_ = o.data_;
    size_ = o.size_;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

MappedBlob::~MappedBlob() {
  if (data_) ::munmap(data_, size_);
}

MappedBlob BlobStore::Map(const std::string& sha256) const {
  struct stat st {};
  const int fd = OpenForRead(sha256, &st);
  MappedBlob m;
  if (st.st_size > 0) {
    const size_t size = static_cast<size_t>(st.st_size);
    // Private and writable: a model whose tensors point into the mapping may write them and gets
    // copies of those pages, never a fault and never a change to the blob. Its page tables are
    // filled as if read, so that they map the page cache's pages rather than copies (populating
    // a writable mapping would copy every page); a kernel without MADV_POPULATE_READ (before
    // 5.14) maps them at first use instead.
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    const int e = errno;
    ::close(fd);
    if (p != MAP_FAILED) {
      // Pages read from disk through this mapping come in 2 MB pieces where the filesystem
      // allows, each mapped by one entry.
      (void)::madvise(p, size, MADV_HUGEPAGE);
      (void)::madvise(p, size, kPopulateRead);
    }
    if (p == MAP_FAILED) {
      errno = e;
      ThrowErrno("cannot map " + PathOf(sha256));
    }
    m.data_ = p;
    m.size_ = static_cast<size_t>(st.st_size);
  } else {
    ::close(fd);
  }
  VerifyOnce(sha256, st, m.bytes());
  return m;
}

BlobStore::Health BlobStore::Check(const std::string& sha256) const {
  const std::string path = PathOf(sha256);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Health::kMissing;
    ThrowErrno("cannot open artifact " + path);
  }
  std::string actual;
  try {
    actual = HashFd(fd, nullptr);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return actual == sha256 ? Health::kOk : Health::kCorrupted;
}

bool BlobStore::Held(const std::string& sha256) const {
  int fd = ::open(PathOf(sha256).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool held = ::flock(fd, LOCK_EX | LOCK_NB) != 0;
  ::close(fd);
  return held;
}

std::vector<std::string> BlobStore::List() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& shard : fs::directory_iterator(root_ + "/sha256", ec)) {
    if (!shard.is_directory()) continue;
    for (const auto& entry : fs::directory_iterator(shard.path(), ec)) {
      const std::string name = entry.path().filename().string();
      if (IsHexDigest(name)) out.push_back(name);
    }
  }
  if (ec) throw StorageError("cannot list blob store " + root_ + ": " + ec.message(), ec.value());
  return out;
}

bool BlobStore::RemoveIfUnused(const std::string& sha256, const std::function<bool()>& unreferenced,
                               int64_t* freed) {
  const std::string path = PathOf(sha256);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const FdCloser closer{fd};
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) return false;  // a writer is committing it
  struct stat held {
  }, named{};
  if (::fstat(fd, &held) != 0 || ::stat(path.c_str(), &named) != 0) return false;
  if (held.st_ino != named.st_ino || held.st_dev != named.st_dev) return false;
  if (!unreferenced()) return false;
  if (::unlink(path.c_str()) != 0) return false;
  if (freed) *freed += held.st_size;
  return true;
}

std::vector<std::string> BlobStore::RecoverAbandoned() {
  std::vector<std::string> digests;
  std::vector<fs::path> entries;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(tmp_dir_, ec)) entries.push_back(entry.path());
  if (ec) throw StorageError("cannot list " + tmp_dir_ + ": " + ec.message(), ec.value());
  for (const auto& path : entries) {
    const std::string name = path.filename().string();
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    // A live writer holds its temporary file locked; only the dead ones' files can be taken.
    const bool abandoned = ::flock(fd, LOCK_EX | LOCK_NB) == 0;
    if (abandoned) {
      const size_t dot = name.find('.');
      const std::string_view digest = std::string_view(name).substr(0, dot);
      if (name.size() > std::strlen(kPendingSuffix) &&
          name.compare(name.size() - std::strlen(kPendingSuffix), std::string::npos,
                       kPendingSuffix) == 0 &&
          IsHexDigest(digest)) {
        digests.emplace_back(digest);
      }
      ::unlink(path.c_str());
    }
    // Closed before the caller locks the blob: the pending file may be a link to the same inode.
    ::close(fd);
  }
  return digests;
}

}  // namespace lepton
