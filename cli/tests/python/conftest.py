"""Shared fixtures of the end-to-end checks on a real Kafka-protocol broker.

``night`` runs ``apflow run`` once per session with the Kafka bus (every pipeline event
and the alert stream on the broker given by ``APFLOW_TEST_KAFKA_BROKERS``), three visits
of two 1024² detectors, and keeps its HTTP server (schema registry, archive) up while
the tests read what it published. ``consume_all`` reads a topic as a community broker
would. Run by ``scripts/python-checks`` (from ``scripts/test``, which starts the broker)
with ``APFLOW_BIN`` set to an ``apflow`` built with the ``kafka`` feature.
"""

import os
import re
import signal
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer

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


def require_broker():
    if not BROKERS or not BIN:
        pytest.skip("APFLOW_TEST_KAFKA_BROKERS or APFLOW_BIN not set (run scripts/test)")


@pytest.fixture(scope="session")
def night(tmp_path_factory):
    """Runs three visits of two detectors over Kafka; yields the summary and the server."""
    require_broker()
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
        [BIN, "run", "--visits", "3", "--detectors", "2", "--size", "1024",
         "--config", str(work / "small.toml"), "--out", str(work / "night"),
         "--metrics-listen", "127.0.0.1:0", "--linger", "900s"],
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
            "tag": tag,
            "dia_sources": int(re.search(r"processed .* (\d+) DiaSources", text).group(1)),
            "published": int(re.search(r"published +(\d+) alerts", text).group(1)),
            "topic": re.search(r"to Kafka topic (\S+),", text).group(1),
            "archive": work / "night" / "archive",
            "work": work,
        }
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def consume_all(topics, expected, timeout=60.0, quiet=2.0):
    """Every message of `topics` (a name or a list) from the beginning, until at least
    `expected` are read and the topics stay quiet for `quiet` seconds (so extra
    messages would be seen)."""
    if isinstance(topics, str):
        topics = [topics]
    c = Consumer({
        "bootstrap.servers": BROKERS,
        "group.id": f"e2e-reader-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    c.subscribe(topics)
    out, deadline, quiet_since = [], time.monotonic() + timeout, None
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                if len(out) >= expected:
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > quiet:
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
