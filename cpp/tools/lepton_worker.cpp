// lepton-worker: one version of a model in a process of its own, started by a deployment.
#include "lepton/runtime/worker.h"

int main(int argc, char** argv) { return lepton::WorkerMain(argc, argv); }
