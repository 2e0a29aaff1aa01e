"""The base: what every layer shares. Typed settings (`settings`), the error table (`errors`),
the exit codes (`exits`), how a request ended (`outcomes`), log lines (`logs`). Imports
nothing of the server."""
