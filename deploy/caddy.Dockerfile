# Caddy as an unprivileged user. The official image runs as root and its /data and /config
# (certificates, ACME account, autosave) belong to root; here they belong to uid 10002, and a new
# named volume mounted there takes that ownership, so Caddy can keep its certificates without
# root. It binds 80 and 443 through docker-compose.yml's net.ipv4.ip_unprivileged_port_start,
# not a capability.
#
# Volumes created by an earlier version (owned by root) need their owner changed once:
#   docker run --rm -v callgate_caddy-data:/data -v callgate_caddy-config:/config \
#       caddy:2.10 chown -R 10002:10002 /data /config
FROM caddy:2.10

RUN chown -R 10002:10002 /data /config

USER 10002:10002
