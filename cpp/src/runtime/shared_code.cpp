#include "shared_code.h"

#include <caffe2/serialize/inline_container.h>
#include <pthread.h>
#include <torch/csrc/jit/serialization/unpickler.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "lepton/common/process.h"
#include "lepton/registry/blob_store.h"

namespace lepton {
namespace {

using caffe2::serialize::PyTorchStreamReader;
using torch::jit::CompilationUnit;

// The archive cannot be built over compiled code (a class with __setstate__, a custom class, a
// class the code does not define): it is loaded by LibTorch instead.
struct NotShareable : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A tensor's data.pkl entry claims more bytes than its record holds: the archive is refused
// (LibTorch itself would read past the record).
struct DamagedArchive : std::runtime_error {
  using std::runtime_error::runtime_error;
};

bool IsTensorRecord(const std::string& name) {
  if (name.rfind("data/", 0) != 0 || name.size() == 5) return false;
  return std::all_of(name.begin() + 5, name.end(),
                     [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; });
}

bool EndsWith(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

// The archive read where it lies: no copy of the bytes.
class BytesView final : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit BytesView(std::string_view bytes) : bytes_(bytes) {}
  size_t size() const override { return bytes_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/) const override {
    if (pos >= bytes_.size()) return 0;
    n = std::min<size_t>(n, bytes_.size() - pos);
    std::memcpy(buf, bytes_.data() + pos, n);
    return n;
  }

 private:
  std::string_view bytes_;
};

std::unique_ptr<PyTorchStreamReader> Reader(std::string_view bytes) {
  return std::make_unique<PyTorchStreamReader>(std::make_shared<BytesView>(bytes));
}

// What must be equal for two archives to share compiled code: every record but the tensors' data
// and the source positions kept for error messages (`*.debug_pkl`), as a SHA-256 in hex.
std::string Fingerprint(PyTorchStreamReader& reader) {
  std::vector<std::string> names = reader.getAllRecords();
  std::sort(names.begin(), names.end());
  std::string text;
  for (const auto& name : names) {
    if (IsTensorRecord(name) || EndsWith(name, ".debug_pkl") || name == ".data/serialization_id") {
      continue;
    }
    auto [data, size] = reader.getRecord(name);
    text += name;
    text.push_back('\0');
    text += std::to_string(size);
    text.push_back('\0');
    text.append(static_cast<const char*>(data.get()), size);
  }
  return Sha256Hex(text);
}

// Compiled code by fingerprint, least recently used first. A null unit marks code that cannot be
// shared, so that its archives go straight to LibTorch.
class CodeCache {
 public:
  static CodeCache& Get() {
    static CodeCache* cache = new CodeCache();  // never destroyed: modules may outlive statics
    return *cache;
  }

  // Whether the fingerprint is known, and its unit (null: not shareable).
  bool Find(const std::string& fp, std::shared_ptr<CompilationUnit>* cu) {
    std::lock_guard<std::mutex> lk(Mutex());
    auto it = index_.find(fp);
    if (it == index_.end()) return false;
    order_.splice(order_.end(), order_, it->second);
    *cu = it->second->second;
    return true;
  }

  void Put(const std::string& fp, std::shared_ptr<CompilationUnit> cu) {
    std::lock_guard<std::mutex> lk(Mutex());
    auto it = index_.find(fp);
    if (it != index_.end()) {
      it->second->second = std::move(cu);
      order_.splice(order_.end(), order_, it->second);
      return;
    }
    order_.emplace_back(fp, std::move(cu));
    index_[fp] = std::prev(order_.end());
    while (order_.size() > kSharedCodeEntries) {
      index_.erase(order_.front().first);
      order_.pop_front();
    }
  }

  // An artifact's fingerprint by its sha256 (both depend on its bytes alone).
  bool FingerprintOf(const std::string& sha256, std::string* fp) {
    std::lock_guard<std::mutex> lk(Mutex());
    auto it = fingerprints_.find(sha256);
    if (it == fingerprints_.end()) return false;
    *fp = it->second;
    return true;
  }

  void KeepFingerprint(const std::string& sha256, const std::string& fp) {
    std::lock_guard<std::mutex> lk(Mutex());
    if (fingerprints_.size() >= kKeptFingerprints) fingerprints_.clear();
    fingerprints_[sha256] = fp;
  }

  // A thread of the parent may have held the lock at fork: the child starts with it free.
  static void AfterForkInChild() { new (&Mutex()) std::mutex(); }

 private:
  static std::mutex& Mutex() {
    static std::mutex* mu = new std::mutex();
    return *mu;
  }

  using Entry = std::pair<std::string, std::shared_ptr<CompilationUnit>>;
  std::list<Entry> order_;
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;
  static constexpr size_t kKeptFingerprints = 100000;  // about 15 MB at most
  std::unordered_map<std::string, std::string> fingerprints_;
};

const bool kCodeCacheAtFork = [] {
  return ::pthread_atfork(nullptr, nullptr, &CodeCache::AfterForkInChild) == 0;
}();

// Every tensor reachable from `root` whose storage was read from the archive must fit inside its
// record: a data.pkl that claims more elements than its record holds is refused.
void CheckStorages(const c10::IValue& root, const std::map<const void*, size_t>& room) {
  std::vector<c10::IValue> todo{root};
  std::unordered_set<const void*> seen;
  while (!todo.empty()) {
    c10::IValue v = std::move(todo.back());
    todo.pop_back();
    if (v.isPtrType() && !seen.insert(v.internalToPointer()).second) continue;
    if (v.isTensor()) {
      const at::Tensor& t = v.toTensor();
      if (!t.defined() || !t.has_storage()) continue;
      const c10::Storage& st = t.storage();
      auto it = room.find(st.data());
      if (it != room.end() && st.nbytes() > it->second) {
        throw DamagedArchive("a tensor of the archive claims " + std::to_string(st.nbytes()) +
                             " bytes where its record holds " + std::to_string(it->second));
      }
    } else if (v.isObject()) {
      const auto obj = v.toObject();
      for (size_t i = 0; i < obj->slots().size(); ++i) todo.push_back(obj->getSlot(i));
    } else if (v.isList()) {
      for (const c10::IValue& e : v.toListRef()) todo.push_back(e);
    } else if (v.isTuple()) {
      for (const c10::IValue& e : v.toTupleRef().elements()) todo.push_back(e);
    } else if (v.isGenericDict()) {
      for (const auto& e : v.toGenericDict()) {
        todo.push_back(e.key());
        todo.push_back(e.value());
      }
    }
  }
}

// Builds the archive's module over `cu`'s classes. With an owner, the tensors point into `bytes`.
torch::jit::Module Unpickle(PyTorchStreamReader& reader, std::string_view bytes,
                            const std::shared_ptr<CompilationUnit>& cu,
                            const std::shared_ptr<void>& owner) {
  auto [pickle, pickle_size] = reader.getRecord("data.pkl");
  const char* pickled = static_cast<const char*>(pickle.get());
  size_t pos = 0;
  auto read = [&, size = pickle_size](char* buffer, size_t len) -> size_t {
    const size_t n = std::min(len, size - pos);
    std::memcpy(buffer, pickled + pos, n);
    pos += n;
    return n;
  };
  auto resolve = [&](const c10::QualifiedName& name) -> c10::StrongTypePtr {
    if (c10::ClassTypePtr cls = cu->get_class(name)) return c10::StrongTypePtr(cu, cls);
    // A container's type tag (Dict[str, int]) names builtin types only.
    try {
      return c10::StrongTypePtr(cu, torch::jit::Unpickler::defaultTypeParser(name.qualifiedName()));
    } catch (const std::exception&) {
      throw NotShareable("type " + name.qualifiedName() + " is not in the code");
    }
  };
  auto build = [](const c10::StrongTypePtr& type,
                  c10::IValue state) -> c10::intrusive_ptr<c10::ivalue::Object> {
    auto cls = type.type_->cast<c10::ClassType>();
    if (!cls || cls->findMethod("__setstate__") || !state.isGenericDict()) {
      throw NotShareable("an object keeps its own state");
    }
    const c10::impl::GenericDict dict = std::move(state).toGenericDict();
    const size_t n = cls->numAttributes();
    auto obj = c10::ivalue::Object::create(type, n);
    for (size_t i = 0; i < n; ++i) {
      auto it = dict.find(c10::IValue(cls->getAttributeName(i)));
      if (it == dict.end()) throw NotShareable("an attribute is missing from the pickle");
      obj->setSlot(i, it->value());
    }
    return obj;
  };

  // Where each record's data ends: at the next record's, or at the end of the archive.
  std::vector<size_t> starts;
  for (const auto& name : reader.getAllRecords()) starts.push_back(reader.getRecordOffset(name));
  std::sort(starts.begin(), starts.end());
  std::map<const void*, size_t> room;
  auto record = [&](const std::string& key) -> at::DataPtr {
    const std::string name = "data/" + key;
    if (!owner) {
      auto [data, size] = reader.getRecord(name);
      room[data.get()] = size;
      return std::move(data);
    }
    const size_t offset = reader.getRecordOffset(name);
    auto next = std::upper_bound(starts.begin(), starts.end(), offset);
    const size_t end = next == starts.end() ? bytes.size() : *next;
    if (offset > bytes.size() || end > bytes.size())
      throw DamagedArchive("a tensor record lies outside the archive");
    char* at = const_cast<char*>(bytes.data()) + offset;
    room[at] = end - offset;
    auto* keep = new std::shared_ptr<void>(owner);
    return at::DataPtr(
        at, keep, [](void* k) { delete static_cast<std::shared_ptr<void>*>(k); }, c10::kCPU);
  };

  torch::jit::Unpickler unpickler(read, resolve, build, record, c10::Device(c10::kCPU));
  unpickler.set_version(reader.version());
  c10::IValue root = unpickler.parse_ivalue();
  if (!root.isObject()) throw NotShareable("the archive's root is not a module");
  CheckStorages(root, room);
  return torch::jit::Module(root.toObject());
}

}  // namespace

LoadedModule LoadTorchScript(std::string_view bytes, std::shared_ptr<void> owner,
                             const std::string& sha256) {
  (void)kCodeCacheAtFork;
  CodeCache& cache = CodeCache::Get();
  std::unique_ptr<PyTorchStreamReader> reader;
  std::string fp;
  std::shared_ptr<CompilationUnit> cu;
  bool known = false;
  try {
    reader = Reader(bytes);
    if (sha256.empty() || !cache.FingerprintOf(sha256, &fp)) {
      fp = Fingerprint(*reader);
      if (!sha256.empty()) cache.KeepFingerprint(sha256, fp);
    }
    known = cache.Find(fp, &cu);
  } catch (const std::exception&) {
    fp.clear();  // not an archive: LibTorch says why
  }
  if (cu) {
    try {
      return {Unpickle(*reader, bytes, cu, owner), /*shared_code=*/true, owner != nullptr};
    } catch (const DamagedArchive&) {
      throw;
    } catch (const std::exception&) {
      // Same code, yet its tensors do not fit it: LibTorch decides and explains.
    }
  }
  LoadedModule out;
  {
    std::lock_guard<std::mutex> compiling(TorchScriptMutex());
    out.module = torch::jit::load(std::make_shared<BytesView>(bytes), c10::kCPU);
  }
  if (fp.empty() || known) return out;
  // Built again over the code just compiled, the module is what every later version with this
  // code will be (and its tensors point into the archive when they may); LibTorch's copies go.
  try {
    cu = out.module._ivalue()->compilation_unit();
    out.module = Unpickle(*reader, bytes, cu, owner);
    out.mapped = owner != nullptr;
    cache.Put(fp, std::move(cu));
  } catch (const DamagedArchive&) {
    throw;
  } catch (const std::exception&) {
    cache.Put(fp, nullptr);
  }
  return out;
}

}  // namespace lepton
