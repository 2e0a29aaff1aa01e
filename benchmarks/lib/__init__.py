"""The benchmarks' library: the HTTP client, workloads, statistics, reports, the server
harness and the checkpoints. Entry points (`python -m benchmarks.X`) import from here, never from
each other; the test suite uses the same harness and checkpoints."""
