"""The process's exit codes, one meaning each, for supervisors and operators (README)."""

EXIT_REFUSED = 2  # a setting the server will not run with (as argparse's usage errors)
EXIT_ENGINE_DEAD = 3  # the engine died; open turns ended with the fallback
EXIT_LOAD_FAILED = 4  # the model could not be loaded
EXIT_WORKER_DIED = 5  # a front-end worker died (server.workers > 1)
EXIT_ENGINE_HUNG = 6  # the engine stopped producing with turns open
EXIT_INTERNAL = 7  # a background task (loader, watchdog) failed: without it nobody watches
