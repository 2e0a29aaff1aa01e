"""The GPU measurement: one prepared command for a GPU host (`python -m benchmarks.gpu`).

See `benchmarks/gpu/README.md` for the host commands and `benchmarks/gpu/__main__.py` for what
it runs. It needs only what the GPU test host has (httpx, no rich, no matplotlib).
"""
