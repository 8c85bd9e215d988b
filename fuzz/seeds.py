#!/usr/bin/env python3
"""Write the seed corpus fuzz/corpus/TARGET/ from real captures (run by hand, the output is
committed): pgoutput messages of the 62-column golden table (tests/it/types_golden.rs) from a
test Postgres, each column's text output, the example configs, and _bulk / _mget answers of an
Elasticsearch-API server.

    source /work/coord/env.sh   # or any WALCAST_TEST_PG / WALCAST_TEST_ES
    python3 fuzz/seeds.py

Needs psql. Each file is named by its content's hash, as libFuzzer names its own.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
DB = "walcast_fuzz_seeds"


def write(target, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def psql(url, sql, db=None):
    if db:
        url = url.rsplit("/", 1)[0] + "/" + db
    out = subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql], check=True, capture_output=True, text=True)
    return out.stdout


def golden_sql():
    src = (ROOT / "tests/it/types_golden.rs").read_text()
    consts = dict(re.findall(r'const (\w+): &str = r#"(.*?)"#;', src, re.S))
    return consts["SCHEMA"], [consts[k] for k in ("ROW_TYPICAL", "ROW_LOW", "ROW_HIGH")]


def frame(messages):
    return b"".join(len(m).to_bytes(2, "big") + m for m in messages if len(m) < 65536)


def pgoutput(url):
    schema, rows = golden_sql()
    psql(url, f"DROP DATABASE IF EXISTS {DB}")
    psql(url, f"CREATE DATABASE {DB}")
    try:
        psql(url, schema, DB)
        psql(url, "CREATE TABLE full_t (a int, b text, big text); ALTER TABLE full_t REPLICA IDENTITY FULL;"
             " CREATE TABLE nokey (a int); CREATE PUBLICATION fuzz_pub FOR ALL TABLES;", DB)
        psql(url, "SELECT pg_create_logical_replication_slot('walcast_fuzz_seeds', 'pgoutput')", DB)
        for row in rows:
            psql(url, row, DB)
        psql(url, "UPDATE golden SET c_text = 'changed', c_int4 = c_int4 + 1 WHERE id = 1", DB)
        psql(url, "UPDATE golden SET id = 10 WHERE id = 4", DB)
        psql(url, "INSERT INTO full_t VALUES (1, 'x', repeat('toast ', 5000)); UPDATE full_t SET b = 'y';"
             " DELETE FROM full_t; INSERT INTO nokey VALUES (1)", DB)
        psql(url, "BEGIN; SELECT pg_logical_emit_message(true, 'fuzz', 'hello'); DELETE FROM golden WHERE id = 3; COMMIT", DB)
        psql(url, "SELECT pg_logical_emit_message(false, 'fuzz', '\\x00ff'::bytea)", DB)
        psql(url, "ALTER TABLE golden ADD COLUMN c_new int8 DEFAULT 7; INSERT INTO golden (id) VALUES (5)", DB)
        values(url)
        psql(url, "TRUNCATE golden, full_t RESTART IDENTITY CASCADE", DB)
        out = psql(url, "SELECT encode(data, 'hex') FROM pg_logical_slot_get_binary_changes('walcast_fuzz_seeds', NULL, NULL,"
                   " 'proto_version', '1', 'publication_names', 'fuzz_pub', 'messages', 'true')", DB)
        messages = [bytes.fromhex(h) for h in out.split()]
        # Every message alone (values of a big insert included), the whole stream, and each
        # transaction with the relations before it.
        seen = set()
        for m in messages:
            if m[:1] not in (b"I", b"U", b"D") or (m[:1], len(m) // 512) not in seen:
                seen.add((m[:1], len(m) // 512))
                write("pgoutput_parse", m[:4096])
        small = [m for m in messages if len(m) < 4096]
        for target in ("stream_decode", "kafka_envelope"):
            write(target, frame(small))
            relations = [m for m in small if m[:1] in (b"R", b"Y")]
            tx, kinds = [], set()
            for m in small:
                tx.append(m)
                if m[:1] == b"C":
                    # One transaction per kind of first change (a few KB each).
                    kind = next((t[:1] for t in tx if t[:1] in b"IUDT"), b"")
                    if kind not in kinds:
                        kinds.add(kind)
                        write(target, frame(relations + tx))
                    tx = []
    finally:
        psql(url, "SELECT pg_drop_replication_slot('walcast_fuzz_seeds') FROM pg_replication_slots WHERE slot_name = 'walcast_fuzz_seeds'")
        psql(url, f"DROP DATABASE IF EXISTS {DB}")


def values(url):
    """Each golden column's text output as Postgres gives it, headed by the fuzz target's pick of its type."""
    src = (ROOT / "fuzz/fuzz_targets/value_json.rs").read_text()
    oids = [int(n.replace("_", "")) for n in re.findall(r"\b\d[\d_]*\b", re.search(r"const OIDS: &\[u32\] = &\[(.*?)\];", src, re.S).group(1))]
    cols = psql(url, "SELECT a.attname, CASE WHEN t.typtype = 'd' THEN t.typbasetype WHEN t.typtype IN ('e', 'c') OR a.atttypid >= 16384 THEN 25"
                " ELSE a.atttypid END FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid WHERE a.attrelid = 'golden'::regclass"
                " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum", DB)
    for line in cols.split("\n"):
        if not line:
            continue
        name, oid = line.split("|")
        oid = int(oid)
        head = bytes([oids.index(oid)]) if oid in oids else b"\xff" + oid.to_bytes(4, "big")
        out = psql(url, f"SELECT encode(convert_to({name}::text, 'UTF8'), 'hex') FROM golden WHERE {name} IS NOT NULL", DB)
        for h in out.split():
            write("value_json", head + bytes.fromhex(h)[:2048])


def configs():
    for p in sorted((ROOT / "config").glob("*.toml")):
        text = p.read_text()
        write("config_toml", text.encode())
        # The example with every option uncommented.
        write("config_toml", re.sub(r"(?m)^# ?(\w[\w.]* = |\[)", r"\1", text).encode())


def es(base):
    def call(method, path, body=None, ctype="application/json"):
        req = urllib.request.Request(base + path, data=body, method=method, headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            return e.read()

    index = "walcast-fuzz-seeds"
    call("DELETE", "/" + index)
    lines = [
        {"index": {"_index": index, "_id": "1", "version": 5, "version_type": "external_gte"}}, {"title": "one", "n": 1},
        {"index": {"_index": index, "_id": "1", "version": 3, "version_type": "external_gte"}}, {"title": "stale"},
        {"index": {"_index": index, "_id": "2"}}, {"title": "two", "tags": ["a", "b"]},
        {"delete": {"_index": index, "_id": "missing"}},
        {"index": {"_index": index, "_id": "3"}}, {"n": "not a number"},
    ]
    body = "".join(json.dumps(l) + "\n" for l in lines).encode()
    answer = call("POST", "/_bulk?refresh=true", body, "application/x-ndjson")
    write("es_bulk_answer", bytes([5]) + answer)
    answer = call("POST", "/_bulk", (json.dumps({"delete": {"_index": index, "_id": "2"}}) + "\n").encode(), "application/x-ndjson")
    write("es_bulk_answer", bytes([1]) + answer)
    docs = {"docs": [{"_index": index, "_id": "1"}, {"_index": index, "_id": "missing"}, {"_index": "walcast-fuzz-none", "_id": "1"}]}
    write("es_mget_answer", bytes([3]) + call("POST", "/_mget", json.dumps(docs).encode()))
    call("DELETE", "/" + index)


def main():
    pgoutput(os.environ["WALCAST_TEST_PG"])
    configs()
    for var in ("WALCAST_TEST_ES", "WALCAST_TEST_ES_NOIDA"):
        if os.environ.get(var):
            es(os.environ[var])
    for d in sorted(CORPUS.iterdir()):
        files = list(d.iterdir())
        print(f"{d.name}: {len(files)} files, {sum(f.stat().st_size for f in files)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
