"""Between the engine and the model runner: the executor runs each step on this process's runner and, under
tensor parallelism, on the worker processes it launched (rank 1..N-1), each running the same runner on its shard."""
