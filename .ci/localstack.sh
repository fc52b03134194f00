#!/usr/bin/env bash
# Usage: localstack.sh WORK_DIR COMMAND...
# Installs LocalStack's SQS (no Docker) into WORK_DIR, starts it on a free port
# of 127.0.0.1, runs COMMAND with SQSTASKMASTER_TEST_ENDPOINT pointing at it
# (and SQSTASKMASTER_TEST_DYNAMODB_ENDPOINT at a moto server, see below),
# stops them, and exits with COMMAND's status. LocalStack 2026.3.0 needs Python 3.13.
set -euo pipefail
work_dir="$1"
shift

python313=""
# A pyenv shim may exist without running (3.13 installed but not selected): try it.
if command -v python3.13 >/dev/null 2>&1 && python3.13 -c "" >/dev/null 2>&1; then
    python313="$(command -v python3.13)"
fi
if [ -z "$python313" ] && command -v pyenv >/dev/null 2>&1; then
    python313="$(ls -d "$(pyenv root)"/versions/3.13*/bin/python3.13 2>/dev/null | tail -n 1 || true)"
fi
if [ -z "$python313" ]; then
    echo "localstack.sh: no Python 3.13 on this machine; LocalStack needs it" >&2
    exit 1
fi

ls_venv="$work_dir/localstack-venv"
"$python313" -m venv "$ls_venv"
"$ls_venv/bin/pip" install --quiet "localstack-core[base-runtime]==2026.3.0"
# Its own dependencies broke it since; pin them (see shared/localstack.md).
"$ls_venv/bin/pip" install --quiet "cbor2<6" service-identity "cryptography<45" "pyopenssl<25"

port="$("$ls_venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p "$work_dir/localstack-root"
SERVICES=sqs EAGER_SERVICE_LOADING=1 \
GATEWAY_LISTEN="127.0.0.1:$port" LOCALSTACK_HOST="127.0.0.1:$port" GATEWAY_SERVER=hypercorn \
SQS_ENDPOINT_STRATEGY=off SQS_DISABLE_CLOUDWATCH_METRICS=1 SQS_DELAY_PURGE_RETRY=1 \
DNS_ADDRESS=0 DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 OVERRIDE_IN_DOCKER=0 \
FILESYSTEM_ROOT="$work_dir/localstack-root" \
    "$ls_venv/bin/python" -m localstack.runtime.main >"$work_dir/localstack.log" 2>&1 &
ls_pid=$!
trap 'kill "$ls_pid" 2>/dev/null || true; wait "$ls_pid" 2>/dev/null || true' EXIT

endpoint="http://127.0.0.1:$port"
up=0
for _ in $(seq 1 120); do
    if "$ls_venv/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/_localstack/health', timeout=1)" "$endpoint" 2>/dev/null; then
        up=1
        break
    fi
    if ! kill -0 "$ls_pid" 2>/dev/null; then
        echo "localstack.sh: LocalStack exited before answering; its log:" >&2
        tail -n 40 "$work_dir/localstack.log" >&2
        exit 1
    fi
    sleep 0.5
done
if [ "$up" != 1 ]; then
    echo "localstack.sh: LocalStack did not answer on $endpoint within 60 s; its log:" >&2
    tail -n 40 "$work_dir/localstack.log" >&2
    exit 1
fi
echo "LocalStack's SQS on $endpoint"

# LocalStack's DynamoDB runs "DynamoDB Local", a jar it downloads and whose
# licence is not open source: the status table's tests use a moto server for
# DynamoDB here (SQS stays LocalStack's). The command's Python has moto[server].
ddb_port="$("$ls_venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$1" -m moto.server -H 127.0.0.1 -p "$ddb_port" >"$work_dir/moto-dynamodb.log" 2>&1 &
ddb_pid=$!
trap 'kill "$ls_pid" "$ddb_pid" 2>/dev/null || true; wait "$ls_pid" "$ddb_pid" 2>/dev/null || true' EXIT
ddb_endpoint="http://127.0.0.1:$ddb_port"
for _ in $(seq 1 60); do
    if "$ls_venv/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/moto-api/', timeout=1)" "$ddb_endpoint" 2>/dev/null; then
        break
    fi
    sleep 0.5
done
echo "moto's DynamoDB on $ddb_endpoint"
SQSTASKMASTER_TEST_ENDPOINT="$endpoint" SQSTASKMASTER_TEST_DYNAMODB_ENDPOINT="$ddb_endpoint" "$@"
