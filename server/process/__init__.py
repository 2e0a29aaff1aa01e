"""The process: uvicorn with the connection guard (`serve`, `connections`) and several front-end
workers on one engine core (`workers`). The top with `server.__main__`; may import every layer."""
