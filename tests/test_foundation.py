"""Store, migrations, broker round trips and the embedded default, against real servers."""

import asyncio
import json
import os
import subprocess
import sys

import asyncpg
import pytest

from tests.conftest import ROOT, open_test_store, run_cli
from workers.infra.urls import with_database, with_redis_db
from workers.store import upgrade


def _tables(url):
    async def go():
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
            versions = await conn.fetch("SELECT version FROM schema_migrations")
            return {r[0] for r in rows}, [r[0] for r in versions]
        finally:
            await conn.close()
    return asyncio.run(go())


def test_migrations_apply_once_and_again_with_no_change(pg_url):
    async def go():
        conn = await asyncpg.connect(pg_url)
        try:
            first = await upgrade(conn)
            second = await upgrade(conn)
            return first, second
        finally:
            await conn.close()
    first, second = asyncio.run(go())
    shipped = sorted(f.name for f in (ROOT / "schemas" / "migrations").glob("*.sql"))
    assert first == shipped and first[:2] == ["0001_init.sql", "0002_lifecycle.sql"] and second == []
    tables, versions = _tables(pg_url)
    assert {"texts", "vidb_items", "jobs", "windows", "chunks", "comparisons", "judge_cache", "scores",
            "generations", "embeddings"} <= tables
    assert versions == [int(name.split("_", 1)[0]) for name in shipped]


def test_migration_9_gives_values_with_only_imported_items_their_version_1(pg_url):
    """A database from before migration 9: one value with seed items and no version, one with a
    fitted version. Upgrading snapshots the first as its version 1 and leaves the second alone."""
    from workers.store.core import _migrations

    async def go():
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                               " applied_at timestamptz NOT NULL DEFAULT now())")
            for version, name, sql in _migrations():
                if version < 9:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            ids = [await conn.fetchval("INSERT INTO texts (sha256, body) VALUES (sha256($1::bytea), $2) RETURNING id",
                                       f"text {i}".encode(), f"text {i}") for i in range(5)]
            await conn.executemany("INSERT INTO vidb_items (value, text_id, intensity, source) VALUES ($1, $2, $3, $4)",
                                   [("care-harm", ids[0], 4.0, "seed"), ("care-harm", ids[1], -2.5, "seed"),
                                    ("care-harm", ids[2], 0.5, "import:x.csv"), ("justice", ids[3], 1.0, "fit:b")])
            await conn.execute("INSERT INTO vidb_versions (value, version, kind, job_id, n_items, n_new, n_comparisons,"
                               " scale) VALUES ('justice', 1, 'build', 'b', 1, 1, 3, 'isotonic')")
            applied = await upgrade(conn)
            assert applied[0] == "0009_import_versions.sql"  # and the migrations shipped after it
            assert applied == [name for version, name, _ in _migrations() if version >= 9]
            versions = [tuple(r) for r in await conn.fetch(
                "SELECT value, version, kind, n_items, n_new FROM vidb_versions ORDER BY value")]
            snap = await conn.fetch("SELECT value, version, text_id, intensity, source FROM vidb_version_items"
                                    " ORDER BY text_id")
            return versions, [tuple(r) for r in snap], ids
        finally:
            await conn.close()

    versions, snap, ids = asyncio.run(go())
    assert versions == [("care-harm", 1, "import", 3, 3), ("justice", 1, "build", 1, 1)]
    assert snap == [("care-harm", 1, ids[0], 4.0, "seed"), ("care-harm", 1, ids[1], -2.5, "seed"),
                    ("care-harm", 1, ids[2], 0.5, "import:x.csv")]


def test_two_concurrent_upgrades_from_two_processes(pg_url, env):
    procs = [subprocess.Popen([sys.executable, "-m", "scheduler.cli", "db", "upgrade"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    shipped = sorted(int(f.name.split("_", 1)[0]) for f in (ROOT / "schemas" / "migrations").glob("*.sql"))
    assert _tables(pg_url)[1] == shipped
    # exactly one of the two applied the migrations; the other found the schema up to date
    assert sorted(o[0].strip().split(":")[0] for o in outs) == ["applied", "schema up to date"]


def _comparisons(n, job="j1"):
    return [(i, "care-harm", [1, 2, 3], [2, 0, 1], None, (0.1, 50, 8, 1, False)) for i in range(n)]


async def _job_with_windows(store, n: int, job: str = "j1") -> None:
    """A running job whose chunk 0 holds windows 0..n-1 (what record_rankings updates)."""
    await store.pool.execute("INSERT INTO jobs (id, kind, spec, state) VALUES ($1, 'score', '{}', 'running')", job)
    await store.stage_windows(job, [(i, 0, "care-harm", [1, 2, 3], 0) for i in range(n)], [(0, "default")],
                              columns=("window_id", "chunk_no", "value", "members", "seed"))


def test_duplicate_comparison_is_ignored_and_100k_copy_lands_once(pg_url):
    async def go():
        store = await open_test_store(pg_url)
        try:
            await _job_with_windows(store, 100_000)
            added = await store.record_rankings("j1", 0, "judge-a", _comparisons(3), [])
            again = await store.record_rankings("j1", 0, "judge-a", _comparisons(3), [])
            other_judge = await store.record_rankings("j1", 0, "judge-b", _comparisons(1), [])
            big = await store.record_rankings("j1", 0, "judge-c", _comparisons(100_000), [])
            big_again = await store.record_rankings("j1", 0, "judge-c", _comparisons(100_000), [])
            n = await store.pool.fetchval("SELECT count(*) FROM comparisons WHERE judge='judge-c'")
            distinct = await store.pool.fetchval("SELECT count(DISTINCT window_id) FROM comparisons WHERE judge='judge-c'")
            row = await store.pool.fetchrow("SELECT item_ids, ranking FROM comparisons WHERE judge='judge-a' AND window_id=1")
            done = await store.pool.fetchval("SELECT count(*) FROM windows WHERE job_id='j1' AND state='done'")
            # windows named under the wrong chunk: refused, and nothing of it is stored
            with pytest.raises(RuntimeError, match="are windows of chunk 1"):
                await store.record_rankings("j1", 1, "judge-d", _comparisons(5), [])
            stray = await store.pool.fetchval("SELECT count(*) FROM comparisons WHERE judge='judge-d'")
            return added, again, other_judge, big, big_again, n, distinct, row, done, stray
        finally:
            await store.close()
    added, again, other, big, big_again, n, distinct, row, done, stray = asyncio.run(go())
    assert (added, again, other) == (3, 0, 1)
    assert (big, big_again, n, distinct) == (100_000, 0, 100_000, 100_000)
    assert list(row["item_ids"]) == [1, 2, 3] and list(row["ranking"]) == [2, 0, 1]
    assert done == 100_000 and stray == 0


def test_two_deliveries_of_one_chunk_racing_store_each_comparison_once(pg_url):
    """Another delivery of the chunk has stored a comparison of it (its transaction still open):
    this one's direct COPY waits on that row's index entry, fails on it, and falls back to the
    merge that skips it. Every comparison is stored once and counted once; a write nobody races
    takes the direct COPY alone."""
    async def go():
        store = await open_test_store(pg_url)
        merges = []
        real_merge = store._copy_merge

        async def counted_merge(*a, **k):
            merges.append(a[1])
            return await real_merge(*a, **k)

        store._copy_merge = counted_merge
        try:
            await _job_with_windows(store, 1_000)
            await _job_with_windows(store, 10, "j2")
            assert await store.record_rankings("j2", 0, "judge-a", _comparisons(10), []) == 10
            assert merges == []  # nobody raced: one COPY straight into the table
            async with store.pool.acquire() as other:
                tx = other.transaction()
                await tx.start()
                await other.execute("INSERT INTO comparisons (job_id, value, window_id, item_ids, judge, ranking)"
                                    " VALUES ('j1', 'care-harm', 7, '{1,2,3}', 'judge-a', '{0,1,2}')")
                mine = asyncio.create_task(store.record_rankings("j1", 0, "judge-a", _comparisons(1_000), []))
                await asyncio.sleep(1.0)  # its COPY now waits on window 7's uncommitted index entry
                assert not mine.done()
                await tx.commit()
                added = await mine
            rows = await store.pool.fetch("SELECT window_id, ranking FROM comparisons WHERE job_id = 'j1'")
            return added, rows, merges
        finally:
            await store.close()

    added, rows, merges = asyncio.run(go())
    assert merges == ["comparisons"]  # the race took the merge, once
    assert added == 999 and len(rows) == 1_000 == len({r["window_id"] for r in rows})
    assert [list(r["ranking"]) for r in rows if r["window_id"] == 7] == [[0, 1, 2]]  # the first stored stays


def test_texts_are_deduplicated_by_content(pg_url):
    async def go():
        store = await open_test_store(pg_url)
        try:
            a = await store.intern_texts(["alpha", "beta", "alpha"])
            b = await store.intern_texts(["beta", "gamma"])
            n = await store.pool.fetchval("SELECT count(*) FROM texts")
            return a, b, n
        finally:
            await store.close()
    a, b, n = asyncio.run(go())
    assert a[0] == a[2] and a[1] == b[0] and n == 3


@pytest.mark.parametrize("queue", ["default", "gpu", "api", "refit"])
def test_task_round_trip_through_broker_to_worker_subprocess(queue, env, workers):
    from workers.tasks.app import app_for

    workers.start(queues=queue)
    app = app_for(env["VALUEFLOW_BROKER_URL"])
    res = app.send_task("valueflow.ping", kwargs={"payload": f"hello-{queue}"}, queue=queue, ignore_result=False)
    out = res.get(timeout=300)
    assert out["payload"] == f"hello-{queue}" and out["queue"] == queue
    assert out["pid"] != os.getpid()


def test_malformed_database_url_gives_one_line_error(tmp_path):
    e = os.environ.copy()
    e.update(VALUEFLOW_DATABASE_URL="mysql://nowhere", VALUEFLOW_BROKER_URL="redis://127.0.0.1:6379/0")
    res = run_cli(["status"], e)
    assert res.returncode != 0
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "VALUEFLOW_DATABASE_URL" in err and "Traceback" not in err
    e["VALUEFLOW_DATABASE_URL"] = "postgresql://host:notaport/db"
    res = run_cli(["jobs", "list"], e)
    assert res.returncode != 0 and "VALUEFLOW_DATABASE_URL" in res.stderr and len(res.stderr.strip().splitlines()) == 1


async def _in_scratch_database(url):
    scratch = with_database(url, "vf scratch")
    assert scratch.split("?")[1] == url.split("?")[1]  # same server options (the socket folder)
    admin = await asyncpg.connect(url)
    try:
        await admin.execute('CREATE DATABASE "vf scratch"')
        conn = await asyncpg.connect(scratch)
        try:
            assert await conn.fetchval("SELECT current_database()") == "vf scratch"
        finally:
            await conn.close()
        await admin.execute('DROP DATABASE "vf scratch"')
    finally:
        await admin.close()


def test_url_helpers_rename_only_the_database():
    assert with_database("postgresql://u:p@db.example:5433/prod?sslmode=require", "vf_1") == \
        "postgresql://u:p@db.example:5433/vf_1?sslmode=require"
    assert with_database("postgresql://postgres:@/postgres?host=/state/pgdata", "vf_2") == \
        "postgresql://postgres:@/vf_2?host=/state/pgdata"
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        with_database("redis://127.0.0.1:6379/0", "x")
    assert with_redis_db("redis://:pw@127.0.0.1:44185/0", 15) == "redis://:pw@127.0.0.1:44185/15"
    assert with_redis_db("redis://127.0.0.1:6379", 3) == "redis://127.0.0.1:6379/3"
    with pytest.raises(ValueError, match="not a Redis URL"):
        with_redis_db("postgresql://u@h/db", 1)


BUILD_TEXTS = [
    "I stayed late to help a new colleague finish her report.",
    "I laughed when my brother dropped his birthday cake.",
    "I lent my neighbour my car while his was being repaired.",
    "I ignored my friend's messages the week her father died.",
    "I cooked dinner for the family next door after their baby was born.",
    "I told my cousin's secret to the whole family to get a laugh.",
    "I checked on my elderly neighbour every morning during the storm.",
    "I kept the change the cashier gave me by mistake and said nothing.",
    "I taught my younger sister to ride a bike over the summer.",
    "I skipped my best friend's wedding to go to a concert.",
    "I gave up my seat on the train to a tired nurse.",
    "I blamed my teammate for a mistake that was mine.",
]


def test_settings_know_exported_embedded_urls_from_configured_ones(monkeypatch, tmp_path):
    """The embedded default exports its URLs to the environment for the workers it spawns; the
    process and its children must still see them as the embedded servers (a ``--wait`` runs its
    own worker only then), while the same URLs set by a user are configured servers."""
    from schemas.settings import EMBEDDED_HOME_VAR, load_settings

    monkeypatch.setenv("VALUEFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("VALUEFLOW_DATABASE_URL", raising=False)
    monkeypatch.delenv("VALUEFLOW_BROKER_URL", raising=False)
    monkeypatch.delenv(EMBEDDED_HOME_VAR, raising=False)
    assert load_settings().embedded
    monkeypatch.setenv("VALUEFLOW_DATABASE_URL", "postgresql://postgres:@/postgres?host=/x/pgdata")
    monkeypatch.setenv("VALUEFLOW_BROKER_URL", "redis://127.0.0.1:40000/0")
    assert not load_settings().embedded  # set by hand: configured servers
    monkeypatch.setenv(EMBEDDED_HOME_VAR, str(tmp_path))
    assert load_settings().embedded  # exported by this home's embedded default
    monkeypatch.setenv(EMBEDDED_HOME_VAR, str(tmp_path / "other"))
    assert not load_settings().embedded  # another home's servers


def test_embedded_default_starts_serves_is_reused_and_stops(tmp_path):
    e = os.environ.copy()
    for var in ("VALUEFLOW_DATABASE_URL", "VALUEFLOW_BROKER_URL"):
        e.pop(var, None)
    home = tmp_path / "state"
    e["VALUEFLOW_HOME"] = str(home)
    try:
        first = run_cli(["up"], e, check=True)
        assert (home / "pgdata" / "PG_VERSION").exists()
        # the benchmarks' scratch databases live next to the embedded one: its socket URL, renamed
        db_url = first.stdout.split()[1]
        assert "?host=" in db_url
        asyncio.run(_in_scratch_database(db_url))
        # a round trip through the embedded broker and database: the main job on two texts
        inp = tmp_path / "in.jsonl"
        inp.write_text('{"id": "a", "text": "I helped my neighbour carry her shopping."}\n'
                       '{"id": "b", "text": "I stole from my best friend."}\n')
        out = tmp_path / "out.csv"
        run_cli(["score", str(inp), "--value", "benevolence", "--wait", "-o", str(out)], e, check=True, timeout=600)
        lines = out.read_text().splitlines()
        assert lines[0].startswith("id,value,intensity") and len(lines) == 3
        # a command that reads the store before it submits (vidb expand counts the value's items)
        # still runs its own worker while it waits: the URLs the first read exported to its
        # environment are still the embedded servers' (it used to wait for a worker forever)
        corpus, new = tmp_path / "corpus.jsonl", tmp_path / "new.jsonl"
        corpus.write_text("".join(json.dumps({"id": f"c{i}", "text": t}) + "\n" for i, t in enumerate(BUILD_TEXTS)))
        new.write_text('{"id": "n1", "text": "I drove my aunt to every one of her hospital visits."}\n')
        built = run_cli(["vidb", "build", str(corpus), "--value", "benevolence", "--comparisons-per-text", "4",
                         "--wait"], e, check=True, timeout=600)
        assert "benevolence: version 2, 42 items (12 new)" in built.stderr  # the seed's 30 and the corpus
        expanded = run_cli(["vidb", "expand", str(new), "--value", "benevolence", "--wait"], e, check=True,
                           timeout=300)
        assert "benevolence: version 3, 43 items (1 new)" in expanded.stderr
        second = run_cli(["up"], e, check=True)
        assert first.stdout == second.stdout  # same servers, same URLs: reused
        st = run_cli(["status"], e, check=True).stdout
        assert st.count("running") == 2
    finally:
        down = run_cli(["down"], e)
    assert down.returncode == 0 and "postgres=stopped" in down.stdout and "redis=stopped" in down.stdout
    assert run_cli(["status"], e).stdout.count("stopped") == 2


def test_an_import_adds_a_version_and_the_seed_never_joins_a_value_that_has_items(pg_url):
    async def go():
        store = await open_test_store(pg_url)
        try:
            assert await store.add_vidb_items("justice", ["We split it evenly.", "I kept the tips."], [5.0, -4.0],
                                              "import:a.csv") == 2
            # the seed's insert re-checks under the value's lock: an import got there first
            assert await store.add_vidb_items("justice", ["Fair shares."], [6.0], "seed", only_if_empty=True) == 0
            assert await store.add_vidb_items("care-harm", ["I held the door."], [3.0], "seed", only_if_empty=True) == 1
            return [tuple(r) for r in await store.pool.fetch(
                "SELECT value, version, kind, n_items, n_new FROM vidb_versions ORDER BY value, version")]
        finally:
            await store.close()

    assert asyncio.run(go()) == [("care-harm", 1, "import", 1, 1), ("justice", 1, "import", 2, 2)]


def test_a_server_that_cannot_be_reached_is_one_line_naming_it_and_nothing_is_stored(env, tmp_path, pg_url):
    """A database or broker that is not there stops a command with one line naming the server and
    its variable (no traceback); a submit whose broker is down stores no job."""
    from tests.test_score_job import _q
    from workers.infra.embedded import free_port

    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "text": "I walked my neighbour home in the dark."}\n')
    dead_db = dict(env, VALUEFLOW_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    res = run_cli(["jobs", "list"], dead_db)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"Error: cannot reach the database, {dead_db['VALUEFLOW_DATABASE_URL']} "
                                 "(VALUEFLOW_DATABASE_URL): ConnectionRefusedError")
    no_db = dict(env, VALUEFLOW_DATABASE_URL=pg_url + "_missing")
    res = run_cli(["jobs", "list"], no_db)
    assert res.returncode == 1 and "(VALUEFLOW_DATABASE_URL): InvalidCatalogNameError: database" in res.stderr
    dead_broker = dict(env, VALUEFLOW_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    broker_line = f"Error: cannot reach the broker, {dead_broker['VALUEFLOW_BROKER_URL']} (VALUEFLOW_BROKER_URL): " \
                  "OperationalError: Error 111 connecting to"
    res = run_cli(["score", str(inp), "--value", "benevolence"], dead_broker)
    assert res.returncode == 1 and res.stderr.startswith(broker_line) and "Traceback" not in res.stderr, res.stderr
    assert _q(pg_url, "SELECT to_regclass('public.jobs') IS NULL AS untouched")[0]["untouched"]  # nothing stored
    # a command that meets the broker after the database: the same line
    job = run_cli(["score", str(inp), "--value", "benevolence", "--no-wait"], env, check=True).stdout.split()[-1]
    res = run_cli(["jobs", "resume", job], dead_broker)
    assert res.returncode == 1 and res.stderr.startswith(broker_line) and "Traceback" not in res.stderr, res.stderr


def test_a_job_whose_tasks_the_broker_did_not_take_is_named_and_resume_sends_them(pg_url, redis_url):
    """The broker fails between the check and the send: the job is stored and live, the error
    names it and says how to send its tasks; ``jobs resume`` sends them once the broker is back."""
    from scheduler import jobs as J
    from schemas.vidb import VidbBuildSpec
    from tests.test_vidb_build import VALUE, corpus
    from workers.infra.embedded import free_port
    from workers.jobs.kinds import vidb_build
    from workers.tasks.app import app_for, queue_depths

    async def go():
        store = await open_test_store(pg_url)
        try:
            spec = VidbBuildSpec(input="mem", value=VALUE, judge="simulated", reference="refs.csv", per_text=4,
                                 scale="minmax", chunk_size=40)
            with pytest.raises(J.TasksNotSent) as err:
                await J.submit(store, app_for(f"redis://127.0.0.1:{free_port()}/0"), vidb_build.KIND, spec,
                               vidb_build.planner(spec, corpus(30)[0], []))
            job = await store.pool.fetchrow("SELECT id, state, n_chunks FROM jobs")
            assert str(err.value).startswith(f"job {job['id']} is stored, but the broker did not take its tasks")
            assert f"`valueflow jobs resume {job['id']}` sends them" in str(err.value)
            assert job["state"] == "running" and job["n_chunks"] >= 2
            assert await J.resume(store, app_for(redis_url), job["id"]) == job["n_chunks"]
            assert sum(queue_depths(redis_url).values()) == job["n_chunks"]
        finally:
            await store.close()

    asyncio.run(go())
