"""Tensor parallelism's communication: which rank this process is in its group (``group``), collectives for the
layers, and the step inputs' wire format between ranks (``transport``). The processes are the executor's."""
