# Sourced by scripts/test and scripts/python-checks: the Python virtual environment of
# the tests (.venv, or $APFLOW_VENV) with tests/python/requirements.txt installed
# (the Python checks' packages and moto's S3 server for the archive tests).

ensure_venv() {
  VENV=${APFLOW_VENV:-.venv}
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
}
