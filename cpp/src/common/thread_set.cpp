#include "lepton/common/thread_set.h"

namespace lepton {

void ThreadSet::Start(std::function<void()> body) {
  for (const auto& id : left_) {
    auto it = threads_.find(id);
    if (it != threads_.end()) {
      it->second.join();
      threads_.erase(it);
    }
  }
  left_.clear();
  std::thread t(std::move(body));
  const auto id = t.get_id();
  threads_.emplace(id, std::move(t));
}

void ThreadSet::Left() { left_.push_back(std::this_thread::get_id()); }

std::vector<std::thread> ThreadSet::TakeAll() {
  std::vector<std::thread> all;
  for (auto& [id, t] : threads_) all.push_back(std::move(t));
  threads_.clear();
  left_.clear();
  return all;
}

}  // namespace lepton
