"""Call-shaped load benchmarks, the side-by-side run against vLLM's own server, and the Model
Address checker.

Everything here speaks HTTP to an endpoint, so the same commands measure a laptop, this CPU box
or a GPU deployment; only `sidebyside` starts servers, and it does so as subprocesses.
"""
