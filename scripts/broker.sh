# Sourced by scripts/test: starts and stops a Kafka-protocol broker (tansu with SQLite
# storage) on 127.0.0.1 for the integration tests.

start_broker() {
  local tansu
  tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
  BROKER_DIR=$(mktemp -d -t apflow-broker.XXXXXX)
  # A free port on loopback.
  BROKER_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
  (cd "$BROKER_DIR" && exec "$tansu" broker \
      --listener-url "tcp://127.0.0.1:$BROKER_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
      --storage-engine "sqlite://broker.db" >broker.log 2>&1) &
  BROKER_PID=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null; then
      export APFLOW_TEST_KAFKA_BROKERS="127.0.0.1:$BROKER_PORT"
      echo "broker: tansu on $APFLOW_TEST_KAFKA_BROKERS (pid $BROKER_PID, log $BROKER_DIR/broker.log)"
      return 0
    fi
    sleep 0.2
  done
  echo "broker: tansu did not start; its log:" >&2
  cat "$BROKER_DIR/broker.log" >&2 || true
  return 1
}

stop_broker() {
  if [ -n "${BROKER_PID:-}" ]; then
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  [ -n "${BROKER_DIR:-}" ] && rm -rf "$BROKER_DIR"
}
