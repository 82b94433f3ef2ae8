"""Several worker processes under concurrent load: real `csm serve --workers 2`, 8 client threads."""
from __future__ import annotations

import threading
import time
from collections import Counter

import requests

from tests.sms.served import Served, cli, user_env

THREADS = 8
ROUNDS = 6
LOAD_DEADLINE = 15.0  # seconds for the whole load phase


def test_two_workers_serve_concurrent_writes_reads_and_tokens_and_the_audit_chain_holds(tmp_path):
    data = tmp_path / "csm-data"
    with Served(data, workers=2) as srv:
        token = srv.http.headers["X-CSM-Token"]
        assert srv.post("/v1/domains", json={"name": "load"}).status_code == 201
        statuses: Counter[tuple[str, int]] = Counter()
        failures: list[str] = []
        lock = threading.Lock()
        deadline = time.monotonic() + LOAD_DEADLINE

        def client(n: int) -> None:
            http = requests.Session()
            http.headers["X-CSM-Token"] = token
            base = srv.url + "/v1/domains/load/secrets"
            try:
                for i in range(ROUNDS):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"thread {n} did not finish {ROUNDS} rounds in {LOAD_DEADLINE}s")
                    name, values = f"s{n}", {"thread": n, "round": i}
                    steps = [
                        ("write", "POST" if i == 0 else "PUT",
                         base if i == 0 else f"{base}/{name}",
                         {"name": name, "values": values} if i == 0 else {"values": values}),
                        ("read", "GET", f"{base}/{name}", None),
                        ("token", "POST", srv.url + "/v1/auth/tokens", {"policies": [], "ttl": 60}),
                    ]
                    for kind, method, url, body in steps:
                        r = http.request(method, url, json=body, timeout=10)
                        with lock:
                            statuses[(kind, r.status_code)] += 1
                        if r.status_code >= 300:
                            raise AssertionError(f"{kind} {method} {url}: {r.status_code} {r.text[:200]}")
                        if kind == "read":
                            assert r.json()["values"] == values and r.json()["version"] == i + 1
                        if kind == "token":
                            assert r.json()["token"].startswith("csm.")
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                http.close()

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(LOAD_DEADLINE + 10)
        assert not any(t.is_alive() for t in threads), "client threads hung"
        assert failures == [], (failures[:5], srv.output()[-2000:])
        assert sum(statuses.values()) == THREADS * ROUNDS * 3
        assert set(statuses) <= {("write", 201), ("write", 200), ("read", 200), ("token", 200), ("token", 201)}
        assert srv.get("/v1/sys/ready").status_code == 200
    assert "Traceback" not in srv.output()

    verified = cli(["audit", "verify"], user_env(data))
    assert verified.returncode == 0 and "OK" in verified.stdout, verified.stderr
    entries = int(verified.stdout.split("OK:")[1].split()[0])
    assert entries >= THREADS * ROUNDS * 3


def test_a_revoked_token_is_refused_by_every_worker_at_once(tmp_path):
    """Each worker caches resolved tokens (here for 60 s); a revoke through one worker signals
    the others through the data directory, so none of them accepts the token afterwards."""
    data = tmp_path / "csm-data"
    with Served(data, workers=2, env={"CSM_AUTH_CACHE_TTL": "60"}) as srv:
        r = srv.post("/v1/auth/tokens", json={"ttl": 600})
        assert r.status_code == 201, r.text
        child, accessor = r.json()["token"], r.json()["accessor"]

        def statuses(n: int) -> Counter[int]:
            # a new connection per request: the kernel spreads them over both workers
            return Counter(requests.get(srv.url + "/v1/auth/tokens/self", headers={"X-CSM-Token": child},
                                        timeout=10).status_code for _ in range(n))

        assert statuses(30) == Counter({200: 30})  # both workers have it cached now
        assert srv.request("DELETE", f"/v1/auth/tokens/{accessor}").status_code == 204
        assert statuses(30) == Counter({401: 30})
