// Threads that come and go: a pool starts one when work arrives, and each leaves on its own once
// idle. A thread that left is joined when the next one starts (it has let go of the pool's lock
// for good by then) or when the pool stops. Guarded by the owner's lock, like the rest of a pool.
#pragma once

#include <functional>
#include <map>
#include <thread>
#include <vector>

namespace lepton {

class ThreadSet {
 public:
  // Joins the threads that left, then starts one running `body`.
  void Start(std::function<void()> body);
  // Called by a thread of the set as it leaves, under the owner's lock.
  void Left();
  // Every thread, to join outside the owner's lock once they have been told to stop.
  std::vector<std::thread> TakeAll();

 private:
  std::map<std::thread::id, std::thread> threads_;
  std::vector<std::thread::id> left_;
};

}  // namespace lepton
