#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL, Redis and Prometheus on loopback, then stop them:
#   scripts/with_team_services.sh make test-team
# Installs Debian's postgresql, redis-server and prometheus first when they are missing and we
# are root. The command gets DATABASE_URL, REDIS_URL and PROMETHEUS_URL; Prometheus scrapes
# every /metrics listed in $MLXM_PROM_TARGETS (file service discovery, JSON, rewritten by the
# tests) with the bearer token in $MLXM_PROM_TOKEN_FILE, every second. Its exit status is the
# command's.
set -euo pipefail

need_install=()
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || need_install+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need_install+=(redis-server)
command -v prometheus >/dev/null 2>&1 || need_install+=(prometheus)
if ((${#need_install[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need_install[*]} (apt-get)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_install[@]}" >/dev/null
  else
    echo "missing: ${need_install[*]} (install them, or run as root with apt-get)" >&2
    exit 1
  fi
fi

PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT=$(free_port)
REDISPORT=$(free_port)
PROMPORT=$(free_port)
WORK=$(mktemp -d /tmp/mlxm-services.XXXXXX)
chmod 755 "$WORK"
PGDATA="$WORK/pg"

# PostgreSQL refuses to run as root: use the postgres account then.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
mkdir -p "$PGDATA"
[ "$(id -u)" = 0 ] && chown postgres "$PGDATA"

cleanup() {
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
  redis-cli -h 127.0.0.1 -p "$REDISPORT" shutdown nosave >/dev/null 2>&1 || true
  [ -n "${PROMPID:-}" ] && kill "$PROMPID" >/dev/null 2>&1 && wait "$PROMPID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

as_pg "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres -E UTF8 >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w \
  -o "-h 127.0.0.1 -p $PGPORT -k $PGDATA -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
  start >/dev/null
as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres mlxm

redis-server --bind 127.0.0.1 --port "$REDISPORT" --save "" --appendonly no --dir "$WORK" \
  --daemonize yes --logfile "$WORK/redis.log" >/dev/null
for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p "$REDISPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

echo '[]' > "$WORK/targets.json"
: > "$WORK/metrics_token"
cat > "$WORK/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: mlxm
    authorization:
      type: Bearer
      credentials_file: $WORK/metrics_token
    file_sd_configs:
      - files: [$WORK/targets.json]
        refresh_interval: 1s
YAML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prom" \
  --web.listen-address="127.0.0.1:$PROMPORT" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
PROMPID=$!
ready() { python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" >/dev/null 2>&1; }
for _ in $(seq 100); do ready "http://127.0.0.1:$PROMPORT/-/ready" && break; sleep 0.1; done

export DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/mlxm"
export PROMETHEUS_URL="http://127.0.0.1:$PROMPORT"
export MLXM_PROM_TARGETS="$WORK/targets.json"
export MLXM_PROM_TOKEN_FILE="$WORK/metrics_token"
export REDIS_URL="redis://127.0.0.1:$REDISPORT/0"
echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT, Redis on 127.0.0.1:$REDISPORT, Prometheus on 127.0.0.1:$PROMPORT"
"$@"
