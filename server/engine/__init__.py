"""The engine: the Protocol the server drives (`api`), vLLM's `AsyncLLM` behind it
(`vllm_adapter`), one core shared by several workers (`shared_core`), LoRA adapters (`adapters`),
where the model comes from (`model_source`, `embedded`).

The only package that imports vLLM, and only in `vllm_adapter` and `shared_core`: importing
`api`, `adapters` or `model_source` loads no vLLM. Imports `server.base`."""
