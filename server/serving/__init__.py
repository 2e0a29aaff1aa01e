"""Serving turns: the switchboard that plans and admits them (`switchboard`, `admission`), the
turn itself (`turn`, `progress`), its log line (`turn_log`), the metrics (`metrics`) and the
server's life (`lifecycle`). Drives the engine through `server.engine.api` only (the engine is
handed in). No HTTP framework; imports `server.base`, `server.wire`, `server.text` and
`server.engine.api`/`adapters`."""
