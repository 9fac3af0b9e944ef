"""apflow's schema registry and alert archive, checked from the outside with the
registry client brokers use (confluent-kafka's SchemaRegistryClient and
AvroDeserializer) and with fastavro reading the nightly container files.

The server is `cargo run -p apflow-alert-dist --example serve_registry DIR`;
scripts/python-checks sets APFLOW_SERVE_REGISTRY to the built binary."""

import json
import os
import subprocess
import urllib.request

import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    binary = os.environ["APFLOW_SERVE_REGISTRY"]
    proc = subprocess.Popen(
        [binary, str(tmp_path_factory.mktemp("archive"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    info = json.loads(proc.stdout.readline())
    yield info
    proc.stdin.close()
    proc.wait(timeout=10)


def test_the_registry_client_fetches_schemas_by_id_and_by_subject(server):
    client = SchemaRegistryClient({"url": server["url"]})
    for sid, text in server["schemas"].items():
        schema = client.get_schema(int(sid))
        assert schema.schema_type == "AVRO"
        assert json.loads(schema.schema_str) == json.loads(text)
    assert client.get_subjects() == [server["subject"]]
    assert client.get_versions(server["subject"]) == [1, 2]
    latest = client.get_latest_version(server["subject"])
    assert (latest.schema_id, latest.version, latest.subject) == (1101, 2, server["subject"])
    first = client.get_version(server["subject"], 1)
    assert first.schema_id == 1100
    assert json.loads(first.schema.schema_str) == json.loads(server["schemas"]["1100"])


def test_registry_errors_carry_confluent_codes(server):
    client = SchemaRegistryClient({"url": server["url"]})
    with pytest.raises(SchemaRegistryError) as e:
        client.get_schema(4242)
    assert (e.value.http_status_code, e.value.error_code) == (404, 40403)
    with pytest.raises(SchemaRegistryError) as e:
        client.get_latest_version("no-such-topic-value")
    assert e.value.error_code == 40401
    with pytest.raises(SchemaRegistryError) as e:
        client.get_version(server["subject"], 9)
    assert e.value.error_code == 40402


def test_archived_alerts_decode_with_the_registry(server):
    client = SchemaRegistryClient({"url": server["url"]})
    deserialize = AvroDeserializer(client)
    ctx = SerializationContext("alerts-v11", MessageField.VALUE)
    for sid, expected in server["alerts"].items():
        with urllib.request.urlopen(f"{server['url']}/v1/alerts/{sid}") as r:
            wire = r.read()
        assert wire[0] == 0 and int.from_bytes(wire[1:5], "big") == 1100
        alert = deserialize(wire, ctx)
        assert alert == {"diaSourceId": int(sid), "note": expected["note"]}


def test_each_nightly_file_holds_exactly_its_nights_alerts(server):
    for night, path in server["nights"].items():
        with open(path, "rb") as f:
            reader = fastavro.reader(f)
            assert reader.codec == "null"
            records = list(reader)
        expected = {
            int(sid): a["note"] for sid, a in server["alerts"].items() if str(a["night"]) == night
        }
        assert len(records) == len(expected)
        assert {r["diaSourceId"]: r["note"] for r in records} == expected
