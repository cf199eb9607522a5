"""Two backend replicas in separate processes, sharing only a real Mosquitto and a real PostgreSQL:
results of the same cameras reach both (shared subscription), each decides them in batches (group
commit), and together they raise exactly the alerts one replica would; replays are refused whichever replica gets them; the per-gateway rate
limit holds for the pair; a replica killed between storing alerts and publishing them leaves
them to the other, which publishes each exactly once (and not while the first still lives).

PLUMBING: IdentityCodec instead of CKKS (tests/support/replica.py); the state is what is tested."""
from __future__ import annotations

import json
import time

import pytest

from backend_decryptor import alerts
from tests.support.backend import message, wait_for
from tests.support.backend import MQTTTestClient as MqttClient
from tests.support.replicas import CAMERAS, Replica, one_replica, readings, shape, spec


def query(pg, dbname: str, sql: str, args=()):
    with pg.connect(dbname) as conn:
        return conn.execute(sql, args).fetchall()


def handled(pg, dbname: str) -> int:
    """Results handled so far by any replica: processed (counters) + rejected (rejections)."""
    n = query(pg, dbname, "SELECT COALESCE(SUM(messages), 0) FROM counters")[0][0]
    return n + query(pg, dbname, "SELECT COALESCE(SUM(count), 0) FROM rejections")[0][0]


def publish_paced(pub, pg, dbname, inputs, t0: float, rounds: range, before: int) -> int:
    """Round r: one result per camera captured at t0 + r (a 1 fps camera); the next round once
    this one is handled, so each camera's results are decided in capture order as with one replica."""
    done = before
    for r in rounds:
        for gw, cam in CAMERAS:
            count, logit = inputs[cam][r]
            pub.publish(*message(r, count, logit, gateway=gw, camera=cam, t=t0 + r))
        done += len(CAMERAS)
        wait_for(lambda: handled(pg, dbname) >= done, timeout=30, what=f"round {r} handled")
    return done


def stored_shape(pg, dbname: str) -> dict[str, list[tuple]]:
    rows = query(pg, dbname, "SELECT id, camera, zone, type, event, level, time, raised_at, meta FROM alerts "
                             "ORDER BY row")
    out: dict[str, list] = {cam: [] for _, cam in CAMERAS}
    for id_, cam, zone, type_, event, level, t, raised_at, meta in rows:
        out[cam].append(alerts.AlertEvent(id_, cam, zone, type_, event, level, t, raised_at, json.loads(meta)))
    return {cam: shape(evs) for cam, evs in out.items()}


@pytest.fixture
def pg_db(postgres_server):
    name = postgres_server.fresh_database()
    # batch_wait: a round's results reach a replica within ms of each other: they are decided in batches
    return name, postgres_server.database_config(name, outbox_lease=2, batch_wait=0.02)


def test_two_replicas_raise_exactly_the_alerts_of_one_and_share_replays_and_the_rate_limit(
        tmp_path, broker, postgres_server, pg_db):
    dbname, database = pg_db
    limits = {"limits": {"per_gateway_rate": 5, "per_gateway_burst": 10}}
    replicas = [Replica(spec(tmp_path, broker, database, f"backend-{n}", **limits)) for n in "ab"]
    watcher = MqttClient(broker, subscribe=["fhe-edge/alerts/#"])
    pub = MqttClient(broker)
    try:
        rounds, t0 = 24, time.time() - 60
        inputs = readings(rounds)
        done = publish_paced(pub, postgres_server, dbname, inputs, t0, range(rounds), 0)
        expected = one_replica(inputs, t0)
        assert sum(map(len, expected.values())) >= 10, "the input must raise and clear alerts"
        assert stored_shape(postgres_server, dbname) == expected
        # both replicas decided results of every camera (the stream was split, not partitioned)
        by = dict(query(postgres_server, dbname, "SELECT camera, COUNT(DISTINCT replica) FROM seen GROUP BY camera"))
        assert by == {cam: 2 for _, cam in CAMERAS}, by
        # ... in batches: results committed together share their transaction id
        batch = query(postgres_server, dbname, "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM seen GROUP BY xmin::text) x")
        assert batch[0][0] > 1, "no result was committed in a batch: group commit untested"
        # replays, whichever replica they reach, change nothing
        for r in range(6):
            gw, cam = CAMERAS[r % len(CAMERAS)]
            pub.publish(*message(r, 20.0, 5.0, gateway=gw, camera=cam, t=t0 + r))
        done += 6
        wait_for(lambda: handled(postgres_server, dbname) >= done, what="replays handled")
        assert dict(query(postgres_server, dbname, "SELECT reason, count FROM rejections")) == {"replayed": 6}
        # every stored alert reached the broker exactly once
        n_alerts = sum(map(len, expected.values()))
        wait_for(lambda: len(watcher.json("fhe-edge/alerts/")) >= n_alerts, what="alerts published")
        wait_for(lambda: query(postgres_server, dbname, "SELECT COUNT(*) FROM alerts WHERE published = 0")[0][0]
                 == 0, what="outbox emptied")
        got = [(a["id"], a["event_no"]) for a in watcher.json("fhe-edge/alerts/")]
        assert len(got) == len(set(got)) == n_alerts
        # the per-gateway limit is shared: 30 results of gw-3 captured in one instant, burst 10
        flood_t = time.time()
        for seq in range(30):
            pub.c.publish(*message(seq, 1.0, gateway="gw-3", camera="cam-flood", t=flood_t), qos=1)
        done += 30
        wait_for(lambda: handled(postgres_server, dbname) >= done, what="flood handled")
        assert query(postgres_server, dbname, "SELECT messages FROM counters WHERE camera='cam-flood'")[0][0] == 10
        assert dict(query(postgres_server, dbname, "SELECT reason, count FROM rejections"))["rate_limited"] == 20
    finally:
        pub.close()
        watcher.close()
        logs = [r.stop() for r in replicas]
    assert not any("Traceback" in log for log in logs), logs


def test_a_replica_killed_before_publishing_leaves_its_alerts_to_the_other_once(
        tmp_path, broker, postgres_server, pg_db):
    dbname, database = pg_db
    limits = {"limits": {"per_gateway_rate": None}}
    a = Replica(spec(tmp_path, broker, database, "backend-a", **limits), "--never-publish-alerts")
    b = Replica(spec(tmp_path, broker, database, "backend-b", **limits))
    watcher = MqttClient(broker, subscribe=["fhe-edge/alerts/#"])
    pub = MqttClient(broker)
    try:
        rounds, t0 = 16, time.time() - 60
        inputs = readings(rounds)
        publish_paced(pub, postgres_server, dbname, inputs, t0, range(rounds), 0)
        rows = query(postgres_server, dbname, "SELECT id, meta, replica FROM alerts WHERE published = 0")
        stuck = {(i, json.loads(m)["event_no"]) for i, m, rep in rows if rep == "backend-a"}
        assert stuck, "backend-a stored no alert: nothing to test"
        total = query(postgres_server, dbname, "SELECT COUNT(*) FROM alerts")[0][0]
        # a lives (and renews its leases) for 2.5 leases: b must not take its alerts meanwhile
        wait_for(lambda: len(watcher.json("fhe-edge/alerts/")) >= total - len(stuck), what="b's own alerts")
        time.sleep(5)
        got = {(x["id"], x["event_no"]) for x in watcher.json("fhe-edge/alerts/")}
        assert not got & stuck, "a live replica's alerts were taken over"
        a.kill()
        wait_for(lambda: len(watcher.json("fhe-edge/alerts/")) >= total, timeout=30, what="take-over published")
        wait_for(lambda: query(postgres_server, dbname, "SELECT COUNT(*) FROM alerts WHERE published = 0")[0][0]
                 == 0, what="outbox emptied")
        # a restarts (normally, same client id): its old alerts now belong to b, none is republished
        a = Replica(spec(tmp_path, broker, database, "backend-a", **limits))
        time.sleep(3)
        published = [(x["id"], x["event_no"]) for x in watcher.json("fhe-edge/alerts/")]
        assert len(published) == len(set(published)) == total
        assert stuck <= set(published)
    finally:
        pub.close()
        watcher.close()
        a.stop()
        b.stop()
