// oneTBB's worker threads are a property of the process: an arena only gets workers up to the
// process-wide limit, which defaults to the core count minus one. Servables reserve the workers
// their budgets need here, so that every arena can run at its full budget at once.
#pragma once

namespace lepton {

class WorkerReservation {
 public:
  explicit WorkerReservation(int workers);
  ~WorkerReservation();
  WorkerReservation(const WorkerReservation&) = delete;
  WorkerReservation& operator=(const WorkerReservation&) = delete;
  void Resize(int workers);

 private:
  int workers_;
};

}  // namespace lepton
