#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "lepton/common/errors.h"
#include "lepton/registry/blob_store.h"
#include "test_util.h"

namespace lepton {
namespace {

using testing::TempDir;

TEST(Sha256, KnownVector) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(BlobStore, StoresByHashAndDeduplicates) {
  TempDir dir;
  BlobStore store(dir / "blobs");
  BlobLease a = store.PutBytes("hello", nullptr);
  EXPECT_TRUE(a.created());
  EXPECT_EQ(a.sha256(), Sha256Hex("hello"));
  EXPECT_EQ(a.size(), 5);
  a.Release();
  BlobLease b = store.PutBytes("hello", nullptr);
  EXPECT_FALSE(b.created());
  b.Release();
  EXPECT_EQ(store.List().size(), 1u);
  EXPECT_EQ(store.Read(Sha256Hex("hello")), "hello");
  EXPECT_TRUE(std::filesystem::is_empty(dir / "blobs/tmp"));
}

TEST(BlobStore, PutFileCopiesAndHashesLargeFiles) {
  TempDir dir;
  BlobStore store(dir / "blobs");
  std::string big(3 * (1 << 20) + 17, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 % 251);
  testing::WriteFile(dir / "big.bin", big);
  BlobLease lease = store.PutFile(dir / "big.bin", nullptr);
  EXPECT_EQ(lease.sha256(), Sha256Hex(big));
  EXPECT_EQ(lease.size(), static_cast<int64_t>(big.size()));
  EXPECT_EQ(store.Read(lease.sha256()), big);
}

TEST(BlobStore, MissingSourceIsNotFoundAndDirectoryIsInvalid) {
  TempDir dir;
  BlobStore store(dir / "blobs");
  EXPECT_THROW(store.PutFile(dir / "nope", nullptr), NotFound);
  EXPECT_THROW(store.PutFile(dir.path(), nullptr), InvalidArgument);
}

TEST(BlobStore, ValidatorRefusalLeavesNothingBehind) {
  TempDir dir;
  BlobStore store(dir / "blobs");
  auto refuse = [](const std::string&) { throw InvalidArgument("not this"); };
  EXPECT_THROW(store.PutBytes("junk", refuse), InvalidArgument);
  EXPECT_TRUE(store.List().empty());
  EXPECT_TRUE(std::filesystem::is_empty(dir / "blobs/tmp"));
}

TEST(BlobStore, DetectsCorruptionAndLoss) {
  TempDir dir;
  BlobStore store(dir / "blobs");
  const std::string sha = store.PutBytes("payload", nullptr).sha256();
  EXPECT_EQ(store.Check(sha), BlobStore::Health::kOk);
  std::filesystem::permissions(store.PathOf(sha), std::filesystem::perms::owner_write,
                               std::filesystem::perm_options::add);
  testing::WriteFile(store.PathOf(sha), "tampered");
  EXPECT_EQ(store.Check(sha), BlobStore::Health::kCorrupted);
  EXPECT_THROW(store.Read(sha), IntegrityError);
  std::filesystem::remove(store.PathOf(sha));
  EXPECT_EQ(store.Check(sha), BlobStore::Health::kMissing);
  EXPECT_THROW(store.Read(sha), IntegrityError);
}

TEST(BlobStore, AVerifiedBlobThatChangesIsHashedAgain) {
  TempDir dir;
  BlobStore store(dir / "blobs");
  const std::string sha = store.PutBytes("payload", nullptr).sha256();
  EXPECT_EQ(store.Read(sha), "payload");  // verified once
  EXPECT_EQ(store.Read(sha), "payload");  // the same file, unchanged: not hashed again
  std::filesystem::permissions(store.PathOf(sha), std::filesystem::perms::owner_write,
                               std::filesystem::perm_options::add);
  // Same size, new content: its times changed, so it is checked and refused.
  testing::WriteFile(store.PathOf(sha), "PAYLOAD");
  EXPECT_THROW(store.Read(sha), IntegrityError);
  EXPECT_THROW(store.Read(sha), IntegrityError);
  testing::WriteFile(store.PathOf(sha), "payload");
  EXPECT_EQ(store.Read(sha), "payload");
}

TEST(BlobStore, ReadsIntoAPooledBufferAndVerifiesAsItReads) {
  TempDir dir;
  BlobStore store(dir / "blobs");
  const std::string payload(100000, 'x');
  const std::string sha = store.PutBytes(payload, nullptr).sha256();
  auto pool = BufferPool::Create(1 << 20);
  char* first = nullptr;
  {
    auto b = store.ReadInto(sha, *pool);
    EXPECT_EQ(std::string_view(b->data(), b->size()), payload);
    first = b->data();
  }
  {
    auto b = store.ReadInto(sha, *pool);  // the buffer given back is taken again
    EXPECT_TRUE(b->reused());
    EXPECT_EQ(b->data(), first);
    EXPECT_EQ(std::string_view(b->data(), b->size()), payload);
  }
  std::filesystem::permissions(store.PathOf(sha), std::filesystem::perms::owner_write,
                               std::filesystem::perm_options::add);
  testing::WriteFile(store.PathOf(sha), std::string(100000, 'y'));
  EXPECT_THROW(store.ReadInto(sha, *pool), IntegrityError);
  std::filesystem::remove(store.PathOf(sha));
  EXPECT_THROW(store.ReadInto(sha, *pool), IntegrityError);
}

TEST(BlobStore, HeldBlobIsNotRemoved) {
  TempDir dir;
  BlobStore store(dir / "blobs");
  BlobLease lease = store.PutBytes("held", nullptr);
  EXPECT_FALSE(store.RemoveIfUnused(lease.sha256(), [] { return true; }));
  const std::string sha = lease.sha256();
  lease.Release();
  int64_t freed = 0;
  EXPECT_FALSE(store.RemoveIfUnused(
      sha, [] { return false; }, &freed));
  EXPECT_TRUE(store.RemoveIfUnused(
      sha, [] { return true; }, &freed));
  EXPECT_EQ(freed, 4);
  EXPECT_TRUE(store.List().empty());
}

TEST(BlobStore, RecoversWhatADeadWriterLeft) {
  TempDir dir;
  BlobStore store(dir / "blobs");
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    BlobStore child(dir / "blobs");
    BlobLease lease = child.PutBytes("orphan", nullptr);
    ::_exit(0);  // dies holding the lease: no Release, no destructor
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_EQ(store.List().size(), 1u);
  const auto abandoned = store.RecoverAbandoned();
  ASSERT_EQ(abandoned.size(), 1u);
  EXPECT_EQ(abandoned[0], Sha256Hex("orphan"));
  EXPECT_TRUE(store.RemoveIfUnused(abandoned[0], [] { return true; }));
  EXPECT_TRUE(std::filesystem::is_empty(dir / "blobs/tmp"));
  EXPECT_TRUE(store.List().empty());
}

TEST(BlobStore, LiveWriterIsNotRecovered) {
  TempDir dir;
  BlobStore store(dir / "blobs");
  BlobLease lease = store.PutBytes("in flight", nullptr);
  EXPECT_TRUE(store.RecoverAbandoned().empty());
  EXPECT_EQ(store.List().size(), 1u);
}

TEST(BlobStore, ConcurrentIdenticalWritesStoreOnce) {
  TempDir dir;
  BlobStore store(dir / "blobs");
  std::vector<std::thread> threads;
  std::atomic<int> created{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20; ++i) {
        BlobLease lease = store.PutBytes("same bytes " + std::to_string(i), nullptr);
        if (lease.created()) ++created;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(created.load(), 20);
  EXPECT_EQ(store.List().size(), 20u);
  EXPECT_TRUE(std::filesystem::is_empty(dir / "blobs/tmp"));
}

}  // namespace
}  // namespace lepton
