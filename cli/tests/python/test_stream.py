"""End to end on a real Kafka-protocol broker, from a broker's side.

``apflow run`` processes a simulated visit with the Kafka bus (every pipeline event and
the alert stream on the broker given by ``APFLOW_TEST_KAFKA_BROKERS``); a plain
confluent-kafka consumer then reads the alert topic as a community broker would: it
reads the 5-byte Confluent header, fetches the writer schema by id from apflow's
registry API (``SchemaRegistryClient``), decodes with fastavro, and also reads every
alert with Rubin's ``lsst.v11_0`` schema from lsst-alert-packet as the reader schema.

Run by ``scripts/python-checks`` (from ``scripts/test``, which starts the broker) with
``APFLOW_BIN`` set to an ``apflow`` built with the ``kafka`` feature.
"""

import gzip
import io
import json
import os
import re
import signal
import struct
import subprocess
import time
import uuid
from pathlib import Path

import fastavro
import lsst.alert.packet as lap
import pytest
from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient

BROKERS = os.environ.get("APFLOW_TEST_KAFKA_BROKERS")
BIN = os.environ.get("APFLOW_BIN")

# 1024² detectors hold fewer stars than the defaults (set for 4096²) ask for.
SMALL = """
[science.psf]
min_stars = 4
min_stars_per_term = 4
[science.astrometry]
min_matches = 4
[science.photometry]
min_stars = 3
[science.subtract]
min_stamps = 8
"""


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """Runs one visit of two detectors over Kafka; yields the summary and the server."""
    if not BROKERS or not BIN:
        pytest.skip("APFLOW_TEST_KAFKA_BROKERS or APFLOW_BIN not set (run scripts/test)")
    work = tmp_path_factory.mktemp("stream")
    (work / "small.toml").write_text(SMALL)
    tag = uuid.uuid4().hex[:8]
    env = dict(
        os.environ,
        APFLOW__BUS__URL=f"kafka://{BROKERS}",
        APFLOW__BUS__TOPIC_PREFIX=f"e2e-{tag}.",
        APFLOW__PRODUCER__TOPIC_TEMPLATE=f"e2e-{tag}.alerts-v{{major}}",
        APFLOW__BUS__PARTITIONS="1",
        APFLOW__PRODUCER__PARTITIONS="2",
    )
    proc = subprocess.Popen(
        [BIN, "run", "--visits", "1", "--detectors", "2", "--size", "1024",
         "--config", str(work / "small.toml"), "--out", str(work / "night"),
         "--metrics-listen", "127.0.0.1:0", "--linger", "300s"],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    lines = []
    try:
        # The summary ends with the line announcing that the servers linger.
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "still served" in line:
                break
        else:
            pytest.fail("apflow run ended early:\n" + "\n".join(lines))
        text = "\n".join(lines)
        addr = re.search(r"^metrics: http://(\S+)/metrics", text, re.M).group(1)
        yield {
            "text": text,
            "addr": addr,
            "dia_sources": int(re.search(r"processed .* (\d+) DiaSources", text).group(1)),
            "published": int(re.search(r"published +(\d+) alerts", text).group(1)),
            "topic": re.search(r"to Kafka topic (\S+),", text).group(1),
            "archive": work / "night" / "archive",
        }
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def consume_all(topic, expected, timeout=60.0):
    """Every message of `topic` from the beginning, until `expected` are read and the
    topic stays quiet for two seconds (so extra messages would be seen)."""
    c = Consumer({
        "bootstrap.servers": BROKERS,
        "group.id": f"e2e-reader-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    c.subscribe([topic])
    out, deadline, quiet_since = [], time.monotonic() + timeout, None
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                if len(out) >= expected:
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > 2.0:
                        break
                continue
            if m.error():
                # The topic's partitions may not be known yet right after creation.
                continue
            quiet_since = None
            out.append(m)
    finally:
        c.close()
    return out


def test_a_broker_reads_every_alert_of_a_visit_once(night):
    assert night["dia_sources"] > 0, night["text"]
    assert "0 DiaSources refused an alert" in night["text"], night["text"]
    # One alert per DiaSource went out.
    assert night["published"] == night["dia_sources"], night["text"]

    messages = consume_all(night["topic"], night["published"])
    assert len(messages) == night["dia_sources"]

    registry = SchemaRegistryClient({"url": f"http://{night['addr']}"})
    path = Path(lap.get_schema_path(11, 0)) / "lsst.v11_0.alert.avsc"
    rubin = fastavro.parse_schema(lap.Schema.from_file(str(path)).definition)
    writers = {}
    keys = set()
    for m in messages:
        value = m.value()
        magic, schema_id = struct.unpack(">bI", value[:5])
        assert magic == 0
        if schema_id not in writers:
            schema = registry.get_schema(schema_id)
            writers[schema_id] = fastavro.parse_schema(json.loads(schema.schema_str))
        alert = fastavro.schemaless_reader(io.BytesIO(value[5:]), writers[schema_id])
        as_rubin = fastavro.schemaless_reader(
            io.BytesIO(value[5:]), writers[schema_id], reader_schema=rubin
        )
        source = alert["diaSource"]
        assert as_rubin["diaSource"]["diaSourceId"] == source["diaSourceId"]
        # Keyed by diaSourceId; stamped by the producer.
        key = m.key().decode()
        assert int(key) == source["diaSourceId"] == alert["diaSourceId"]
        keys.add(key)
        headers = dict(m.headers() or [])
        assert int(headers["producer_timestamp"]) > 1.7e12
        # A real measurement on a real detector of the visit.
        assert source["psfFlux"] is not None and source["psfFluxErr"] > 0
        assert source["detector"] in (0, 1)
        assert alert["cutoutDifference"] and alert["cutoutScience"] and alert["cutoutTemplate"]
        # Published alerts are archived, with the very bytes of the wire.
        gz = night["archive"] / "alerts" / f"{source['diaSourceId']}.avro.gz"
        assert gzip.decompress(gz.read_bytes()) == value
    assert len(keys) == len(messages), "keys are not unique"
    assert schema_id == 1100
