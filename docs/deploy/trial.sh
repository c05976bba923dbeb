#!/usr/bin/env bash
# The team deployment, run for real on one machine (loopback): PostgreSQL + Redis (from
# scripts/with_team_services.sh), one worker, two web processes (uvicorn), nginx with TLS in
# front. Run: scripts/with_team_services.sh bash docs/deploy/trial.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
export MLXM_DATA_DIR=$(mktemp -d /tmp/mlxm-trial.XXXXXX)
export MLXM_SECURE=1 MLXM_ALLOWED_HOSTS=mlxm.test MLXM_CSRF_TRUSTED_ORIGINS=https://mlxm.test:8443
export MLXM_LOG_LEVEL=WARNING MLXM_ACCESS_LOG=1  # access lines: which web process served what
pids=()
cleanup() { nginx -c "$MLXM_DATA_DIR/nginx.conf" -s stop 2>/dev/null || true; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$MLXM_DATA_DIR"; }
trap cleanup EXIT

$PY manage.py migrate --noinput -v0
$PY manage.py prepare_demo_models >/dev/null
$PY manage.py collectstatic --noinput -v0
echo "correct-horse-battery" | $PY manage.py create_admin --username admin --password-stdin >/dev/null
KEY=$($PY manage.py create_api_key --username admin --name trial | tail -1)

# Web process 1 runs the worker; web process 2 only the web app on the same worker socket.
$PY manage.py serve --port 8001 >"$MLXM_DATA_DIR/web1.log" 2>&1 & pids+=($!)
$PY manage.py serve --port 8002 --no-worker --no-downloads >"$MLXM_DATA_DIR/web2.log" 2>&1 & pids+=($!)

openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=mlxm.test" -addext "subjectAltName=DNS:mlxm.test" \
  -keyout "$MLXM_DATA_DIR/key.pem" -out "$MLXM_DATA_DIR/cert.pem" 2>/dev/null
sed -e "s#CERT#$MLXM_DATA_DIR/cert.pem#; s#KEY#$MLXM_DATA_DIR/key.pem#; s#STATIC#$MLXM_DATA_DIR/static#" \
  -e "s#^events {}#pid $MLXM_DATA_DIR/nginx.pid; error_log $MLXM_DATA_DIR/nginx-error.log; events {}#" \
  docs/deploy/nginx.conf >"$MLXM_DATA_DIR/nginx.conf"
sed -i "s#^http {#http { access_log $MLXM_DATA_DIR/nginx-access.log; client_body_temp_path $MLXM_DATA_DIR; proxy_temp_path $MLXM_DATA_DIR;#" "$MLXM_DATA_DIR/nginx.conf"
nginx -c "$MLXM_DATA_DIR/nginx.conf"

CURL=(curl -sS --cacert "$MLXM_DATA_DIR/cert.pem" --resolve mlxm.test:8443:127.0.0.1)
for _ in $(seq 240); do "${CURL[@]}" -f -o /dev/null https://mlxm.test:8443/healthz 2>/dev/null && break; sleep 0.5; done
echo "healthz: $("${CURL[@]}" https://mlxm.test:8443/healthz | head -c 80)…"
echo "static: $("${CURL[@]}" -o /dev/null -w '%{http_code} %{content_type}' https://mlxm.test:8443/static/css/app.css)"
echo "headers: $("${CURL[@]}" -D - -o /dev/null https://mlxm.test:8443/login/ | grep -i -E '^(strict-transport|content-security)' | cut -c1-60 | tr '\n' ' ')"
for i in 1 2 3 4; do
  "${CURL[@]}" https://mlxm.test:8443/v1/chat/completions -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d '{"model":"tiny-random","messages":[{"role":"user","content":"hi"}],"max_tokens":4}' -o /dev/null -w "chat $i: %{http_code}\n"
done
echo "streamed: $("${CURL[@]}" -N https://mlxm.test:8443/v1/chat/completions -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"model":"tiny-random","messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true}' | grep -c '^data:') SSE events"
echo "requests per web process: web1=$(grep -c 'POST /v1/chat' "$MLXM_DATA_DIR/web1.log" || true) web2=$(grep -c 'POST /v1/chat' "$MLXM_DATA_DIR/web2.log" || true)"
