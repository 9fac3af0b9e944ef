# Sourced by scripts/test: starts and stops an S3-compatible server (moto's, from the
# test venv: scripts/venv.sh) on 127.0.0.1 for the S3 archive tests
# (apflow-alert-dist and apflow with feature `s3`), which find it through
# APFLOW_TEST_S3_ENDPOINT and sign their requests with the dummy credentials exported
# here (moto accepts any).

start_s3() {
  local venv=${APFLOW_VENV:-.venv}
  S3_DIR=$(mktemp -d -t apflow-s3.XXXXXX)
  # A free port on loopback.
  S3_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$S3_DIR/moto.log" 2>&1 &
  S3_PID=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null; then
      export APFLOW_TEST_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
      export AWS_ACCESS_KEY_ID=apflow-test AWS_SECRET_ACCESS_KEY=apflow-test
      export AWS_DEFAULT_REGION=us-east-1
      echo "s3: moto on $APFLOW_TEST_S3_ENDPOINT (pid $S3_PID, log $S3_DIR/moto.log)"
      return 0
    fi
    sleep 0.2
  done
  echo "s3: moto_server did not start; its log:" >&2
  cat "$S3_DIR/moto.log" >&2 || true
  return 1
}

stop_s3() {
  if [ -n "${S3_PID:-}" ]; then
    kill "$S3_PID" 2>/dev/null || true
    wait "$S3_PID" 2>/dev/null || true
  fi
  [ -n "${S3_DIR:-}" ] && rm -rf "$S3_DIR"
}
