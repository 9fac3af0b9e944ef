"""The filtering service end to end: 100 filters over a replayed simulated night.

The night of the ``night`` fixture (``conftest.py``: ``apflow run`` over Kafka) is
replayed from its alert archive with ``apflow replay`` (fresh ids, as fast as possible)
to a topic of one partition, so the order the filtering service consumes it in is the
topic's offset order. 100 filter files are written from ten templates with seeded
parameters (some drawn from the night's own alerts: cone centres, flux levels), each
with a small quota, and ``apflow distribute`` runs once over the replayed topic.

Independently of apflow's filter language, this file evaluates each filter's condition
in Python on every alert of the replayed topic (decoded with fastavro and the writer
schema from apflow's registry) and applies the documented quota rule (per visit, the
first ``quota`` matches in arrival order pass). Each filter's topic must then hold
exactly those alerts, each once, with the very bytes of the input; so every alert on a
filter topic satisfies its expression and no visit exceeds its filter's quota.
"""

import io
import json
import math
import os
import random
import struct
import subprocess
import uuid
from collections import Counter, defaultdict

import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient

from conftest import BIN, BROKERS, consume_all

AB_ZERO_POINT = 31.4  # m = 31.4 - 2.5 log10(flux / nJy)
BANDS = "ugrizy"


def gt(a, b):
    return a is not None and a > b


def ge(a, b):
    return a is not None and a >= b


def lt(a, b):
    return a is not None and a < b


def sep_deg(ra1, dec1, ra2, dec2):
    """Great-circle separation (haversine), degrees."""
    p1, p2 = math.radians(dec1), math.radians(dec2)
    dp, dl = p2 - p1, math.radians(ra2 - ra1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h))))


def mag(flux):
    if flux is None or not flux > 0:
        return None
    return AB_ZERO_POINT - 2.5 * math.log10(flux)


def make_filters(rng, alerts, tag):
    """100 (name, expression, quota, python predicate) from ten templates."""
    sources = [a["diaSource"] for a in alerts]
    fluxes = sorted(s["psfFlux"] for s in sources if s["psfFlux"] is not None)
    snrs = sorted(s["snr"] for s in sources if s["snr"] is not None)

    def pick(values):
        # A level inside the night's distribution (not on a value: no ties).
        return round(values[rng.randrange(len(values))] * 1.0001 + 1e-3, 4)

    def t_reliable_snr():
        r, s = round(rng.uniform(0.0, 0.9), 2), pick(snrs)
        return (f"diaSource.reliability > {r} AND diaSource.snr >= {s}",
                lambda a: gt(a["diaSource"]["reliability"], r) and ge(a["diaSource"]["snr"], s))

    seen_bands = sorted({s["band"] for s in sources})

    def t_bands_flux():
        # One band of the night (so the filter can match), one drawn from all six.
        b1, b2 = rng.choice(seen_bands), rng.choice(BANDS)
        f = pick(fluxes)
        return (f"diaSource.band IN ('{b1}', '{b2}') AND diaSource.psfFlux > {f}",
                lambda a: a["diaSource"]["band"] in (b1, b2) and gt(a["diaSource"]["psfFlux"], f))

    def t_cone():
        c = sources[rng.randrange(len(sources))]
        ra, dec = round(c["ra"], 5), round(c["dec"], 5)
        rad = round(rng.uniform(0.01, 0.15), 4)
        return (f"cone({ra}, {dec}, {rad})",
                lambda a: sep_deg(a["diaSource"]["ra"], a["diaSource"]["dec"], ra, dec) <= rad)

    def t_history():
        n, s = rng.choice([0, 1, 2]), pick(snrs)
        return (f"n_previous() >= {n} AND diaSource.snr > {s}",
                lambda a: len(a["prvDiaSources"] or []) >= n and gt(a["diaSource"]["snr"], s))

    def t_negative():
        f = -abs(pick(fluxes))
        return (f"diaSource.isNegative = TRUE OR diaSource.psfFlux < {f}",
                lambda a: a["diaSource"]["isNegative"] is True or lt(a["diaSource"]["psfFlux"], f))

    def t_mag():
        m = round(rng.uniform(19.0, 25.0), 3)
        return (f"mag(diaSource.psfFlux) < {m}",
                lambda a: lt(mag(a["diaSource"]["psfFlux"]), m))

    def t_between():
        lo = pick(snrs)
        hi = round(lo + rng.uniform(2.0, 50.0), 3)
        return (f"diaSource.snr BETWEEN {lo} AND {hi} AND diaSource.reliability IS NOT NULL",
                lambda a: ge(a["diaSource"]["snr"], lo) and not gt(a["diaSource"]["snr"], hi)
                and a["diaSource"]["reliability"] is not None)

    def t_object():
        n = rng.choice([1, 2, 3])
        return (f"diaObject.nDiaSources >= {n}",
                lambda a: a["diaObject"] is not None and ge(a["diaObject"]["nDiaSources"], n))

    def t_ratio():
        x = round(rng.uniform(3.0, 40.0), 3)
        return (f"diaSource.psfFlux / diaSource.psfFluxErr > {x}",
                lambda a: a["diaSource"]["psfFluxErr"] not in (None, 0.0)
                and a["diaSource"]["psfFlux"] is not None
                and a["diaSource"]["psfFlux"] / a["diaSource"]["psfFluxErr"] > x)

    def t_not_band():
        b, s = rng.choice(BANDS), pick(snrs)
        return (f"NOT (diaSource.band = '{b}') AND diaSource.snr > {s}",
                lambda a: a["diaSource"]["band"] != b and gt(a["diaSource"]["snr"], s))

    templates = [t_reliable_snr, t_bands_flux, t_cone, t_history, t_negative, t_mag,
                 t_between, t_object, t_ratio, t_not_band]
    filters = []
    for i in range(100):
        expression, predicate = templates[i % len(templates)]()
        quota = rng.choice([1, 2, 3, 5, 20])
        name = f"f{i:03d}"
        filters.append({
            "name": name,
            "expression": expression,
            "quota": quota,
            "topic": f"flt-{tag}.{name}",
            "predicate": predicate,
        })
    return filters


def test_a_hundred_filters_forward_exactly_their_matches_within_quota(night, tmp_path):
    tag = uuid.uuid4().hex[:8]
    replayed = f"e2e-{tag}.replayed"
    out = subprocess.run(
        [BIN, "replay", "--archive", str(night["archive"]), "--brokers", BROKERS,
         "--topic", replayed, "--partitions", "1", "--speed", "max", "--fresh-ids"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr

    messages = consume_all(replayed, night["published"])
    assert len(messages) == night["published"]
    registry = SchemaRegistryClient({"url": f"http://{night['addr']}"})
    writers, alerts = {}, []
    for m in sorted(messages, key=lambda m: m.offset()):
        value = m.value()
        _, schema_id = struct.unpack(">bI", value[:5])
        if schema_id not in writers:
            writers[schema_id] = fastavro.parse_schema(
                json.loads(registry.get_schema(schema_id).schema_str))
        alert = fastavro.schemaless_reader(io.BytesIO(value[5:]), writers[schema_id])
        alerts.append((alert, value))
    # Fresh ids: none of the original night's.
    original = {int(p.name.split(".")[0]) for p in (night["archive"] / "alerts").iterdir()}
    assert not original & {a["diaSourceId"] for a, _ in alerts}

    filters = make_filters(random.Random(20261122), [a for a, _ in alerts], tag)
    fdir = tmp_path / "filters"
    fdir.mkdir()
    for f in filters:
        (fdir / f"{f['name']}.toml").write_text(
            f'owner = "e2e@example.org"\nname = "{f["name"]}"\n'
            f"expression = '''\n{f['expression']}\n'''\n"
            f"quota = {f['quota']}\ntopic = \"{f['topic']}\"\n")

    # What each topic must hold: the first `quota` matches per visit, in offset order.
    expected = {}
    for f in filters:
        per_visit, passing = Counter(), {}
        for alert, value in alerts:
            if f["predicate"](alert):
                visit = alert["diaSource"]["visit"]
                per_visit[visit] += 1
                if per_visit[visit] <= f["quota"]:
                    passing[alert["diaSourceId"]] = value
        expected[f["name"]] = passing
    total = sum(len(v) for v in expected.values())
    # The filters are not vacuous: many forward something, some are cut by a quota.
    assert sum(1 for v in expected.values() if v) >= 50, expected
    assert any(
        sum(1 for a, _ in alerts if f["predicate"](a)) > len(expected[f["name"]])
        for f in filters
    ), "no filter reaches its quota: the quota rule is not exercised"

    env = {"APFLOW__BUS__URL": f"kafka://{BROKERS}"}
    run = subprocess.run(
        [BIN, "distribute", "--filters", str(fdir), "--topic", replayed,
         "--group", f"e2e-filter-{tag}", "--idle-exit", "10s"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, **env},
    )
    assert run.returncode == 0, run.stdout + run.stderr

    forwarded = consume_all([f["topic"] for f in filters], total, timeout=120)
    by_topic = defaultdict(list)
    for m in forwarded:
        by_topic[m.topic()].append(m)
    for f in filters:
        got = by_topic.get(f["topic"], [])
        ids = [int(m.key().decode()) for m in got]
        assert len(ids) == len(set(ids)), f"{f['name']}: an alert forwarded twice"
        assert set(ids) == set(expected[f["name"]]), (
            f"{f['name']} ({f['expression']}, quota {f['quota']}): "
            f"forwarded {sorted(ids)}, expected {sorted(expected[f['name']])}")
        for m in got:
            assert m.value() == expected[f["name"]][int(m.key().decode())]
