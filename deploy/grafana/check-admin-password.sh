#!/bin/sh
# Grafana's entrypoint in docker-compose.yml: refuse to start while the admin password is the
# placeholder from .env.example (or kin) or shorter than 12 characters (Grafana's default
# "admin" among them); then run Grafana ("$@").
# Grafana itself accepts any password, and this one guards a dashboard of every call's timings.
set -eu

password="${GF_SECURITY_ADMIN_PASSWORD:-}"
upper="$(printf '%s' "$password" | tr '[:lower:]' '[:upper:]')"
why=""
case "$upper" in
    *REPLACE* | *CHANGEME* | *CHANGE-ME* | *EXAMPLE* | *PLACEHOLDER*)
        why="is the placeholder from .env.example" ;;
    *)
        if [ "${#password}" -lt 12 ]; then
            why="is shorter than 12 characters"
        fi ;;
esac
if [ -n "$why" ]; then
    echo "grafana: refusing to start: GRAFANA_ADMIN_PASSWORD $why; set it in .env, then" \
        "docker compose up -d" >&2
    exit 1
fi
exec "$@"
