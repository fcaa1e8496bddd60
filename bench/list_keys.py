"""Listing, distraft against etcd (bench/compare-list.sh runs it): 100,000 keys of
16-byte values into each (etcd through its v3 JSON gateway, distraft over HTTP, 32
threads), then every key read back page by page (1000 a page, linearizable reads on
both), on each in turn, 3 rounds; prints keys/s and the ratio distraft/etcd.

    python3 bench/list_keys.py ETCD_LEADER_URL DISTRAFT_LEADER_URL
"""
import base64, json, sys, time, statistics, threading
from concurrent.futures import ThreadPoolExecutor
import requests

ETCD, DISTRAFT = sys.argv[1], sys.argv[2]
N, PAGE = 100_000, 1000
local = threading.local()
def session():
    if not hasattr(local, "s"):
        local.s = requests.Session()
    return local.s
b64 = lambda s: base64.b64encode(s.encode()).decode()
keys = [f"key/{i:06d}" for i in range(N)]

def put_etcd(k):
    r = session().post(f"{ETCD}/v3/kv/put", json={"key": b64(k), "value": b64("v" * 16)}, timeout=10)
    r.raise_for_status()
def put_distraft(k):
    r = session().post(f"{DISTRAFT}/v1/kv/{k.replace('/', '%2F')}", data={"value": "v" * 16}, timeout=10)
    r.raise_for_status()

for name, put in [("etcd", put_etcd), ("distraft", put_distraft)]:
    t = time.time()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, keys))
    print(f"loaded {N} keys into {name} in {time.time() - t:.1f} s", flush=True)

def list_etcd():
    s, n, start = requests.Session(), 0, "key/"
    end = b64("key0")  # prefix end of "key/"
    while True:
        r = s.post(f"{ETCD}/v3/kv/range", json={"key": b64(start), "range_end": end, "limit": PAGE}, timeout=10).json()
        kvs = r.get("kvs", [])
        n += len(kvs)
        if not r.get("more"):
            return n
        start = base64.b64decode(kvs[-1]["key"]).decode() + "\0"
def list_distraft():
    s, n, after = requests.Session(), 0, ""
    while True:
        r = s.get(f"{DISTRAFT}/v1/keys", params={"prefix": "key/", "limit": PAGE, "after": after}, timeout=10).json()
        n += len(r["keys"])
        if r["next"] is None:
            return n
        after = r["next"]

rates = {"etcd": [], "distraft": []}
for round in range(3):
    for name, lister in [("etcd", list_etcd), ("distraft", list_distraft)]:
        t = time.time()
        n = lister()
        dt = time.time() - t
        assert n == N, (name, n)
        rates[name].append(n / dt)
        print(f"round {round + 1}: {name} listed {n} keys in {dt:.2f} s: {n / dt:,.0f} keys/s", flush=True)
e, d = statistics.median(rates["etcd"]), statistics.median(rates["distraft"])
print(f"median keys/s: etcd {e:,.0f}, distraft {d:,.0f}, distraft/etcd {d / e:.2f}")
