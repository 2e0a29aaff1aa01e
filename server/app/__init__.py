"""The HTTP app: routes (`routes`: `create_app`) and the responses that move a turn's bytes
(`responses`). FastAPI and Starlette live here and in `server.process`; imports every layer
below (`server.serving` and down)."""
