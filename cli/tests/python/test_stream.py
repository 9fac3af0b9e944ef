"""End to end on a real Kafka-protocol broker, from a broker's side.

``apflow run`` processes a simulated night with the Kafka bus (the ``night`` fixture of
``conftest.py``); a plain confluent-kafka consumer then reads the alert topic as a
community broker would: it reads the 5-byte Confluent header, fetches the writer schema by id from apflow's
registry API (``SchemaRegistryClient``), decodes with fastavro, and also reads every
alert with Rubin's ``lsst.v11_0`` schema from lsst-alert-packet as the reader schema.

Run by ``scripts/python-checks`` (from ``scripts/test``, which starts the broker) with
``APFLOW_BIN`` set to an ``apflow`` built with the ``kafka`` feature.
"""

import gzip
import io
import json
import struct
from pathlib import Path

import fastavro
import lsst.alert.packet as lap
from confluent_kafka.schema_registry import SchemaRegistryClient

from conftest import consume_all


def test_a_broker_reads_every_alert_of_a_night_once(night):
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
    unmeasured = 0
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
        # The detector's times travel with each alert: its latency from the end of
        # readout is measurable by the consumer.
        shutter, readout = (int(headers[h]) for h in ("shutter_close_timestamp",
                                                       "readout_end_timestamp"))
        assert shutter <= readout <= int(headers["producer_timestamp"])
        assert m.timestamp()[1] - readout < 60_000
        # A real measurement on a real detector of the night: a PSF flux with its
        # error, or (a failed fit, e.g. too few usable pixels) no flux and the flag
        # that says so.
        if source["psfFlux"] is None:
            assert source["psfFlux_flag"] is True, source
            unmeasured += 1
        else:
            assert source["psfFluxErr"] > 0
        assert source["detector"] in (0, 1)
        assert alert["cutoutDifference"] and alert["cutoutScience"] and alert["cutoutTemplate"]
        # Published alerts are archived, with the very bytes of the wire.
        gz = night["archive"] / "alerts" / f"{source['diaSourceId']}.avro.gz"
        assert gzip.decompress(gz.read_bytes()) == value
    assert len(keys) == len(messages), "keys are not unique"
    # At most 10% without a PSF flux, rounded up: the night has a few tens of alerts.
    assert len(messages) >= 10, f"only {len(messages)} alerts in the night"
    assert unmeasured <= -(-len(messages) // 10), f"{unmeasured} of {len(messages)} without a PSF flux"
    assert schema_id == 1100
