"""CmpServer's per-salt PBM key cache: one derivation (and one secret lookup) per client salt,
bounded, and never a way to pass a MAC made with another secret."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from ca.cmp import CmpProfileConfig, CmpServer
from client_sdk import cmp
from client_sdk.cmp import builders
from client_sdk.cmp.enums import FailureInfo
from tests.client_sdk.cmptools import TestPki, ec_key, name

from .doubles import MemoryIssuer, MemoryTransactions
from .test_cmp_server import REF, SECRET, Direct


class CountingSecrets(Mapping[bytes, bytes]):
    """A secrets mapping that counts how often a secret is read (the service decrypts per read)."""

    def __init__(self, secrets: dict[bytes, bytes]) -> None:
        self.secrets = secrets
        self.reads = 0

    def __getitem__(self, kid: bytes) -> bytes:
        self.reads += 1
        return self.secrets[kid]

    def __contains__(self, kid: object) -> bool:
        return kid in self.secrets

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.secrets)

    def __len__(self) -> int:
        return len(self.secrets)


def _server(tmp_path: Path, secrets: CountingSecrets) -> tuple[CmpServer, TestPki]:
    pki = TestPki(tmp_path, "Test CA")
    cfg = CmpProfileConfig(name="t", ca_name=pki.ca_name, shared_secrets=secrets, response_pbm_iterations=500)
    return CmpServer(cfg, issuer=MemoryIssuer(pki), transactions=MemoryTransactions()), pki


def test_a_reused_client_salt_costs_one_secret_read_and_derivation(tmp_path: Path) -> None:
    secrets = CountingSecrets({REF: SECRET})
    server, pki = _server(tmp_path, secrets)
    client = cmp.CmpClient(Direct(server), recipient=pki.ca_name, secret=SECRET, reference=REF,
                           pbm_iterations=500, implicit_confirm=True)
    for i in range(3):
        client.ir(ec_key(), subject=name(f"nf{i}"))
    # one read for the client's salt, one for the server's response salt (reused for a minute):
    # the SDK client reuses its salt for a minute too
    assert secrets.reads == 2
    fresh = cmp.CmpClient(Direct(server), recipient=pki.ca_name, secret=SECRET, reference=REF,
                          pbm_iterations=500, implicit_confirm=True, pbm_salt_lifetime=0)
    fresh.ir(ec_key(), subject=name("nf-fresh"))
    fresh.ir(ec_key(), subject=name("nf-fresh2"))
    assert secrets.reads == 4  # a fresh salt per message (openssl's way): one derivation each


def test_a_cached_salt_does_not_let_another_secret_through(tmp_path: Path) -> None:
    secrets = CountingSecrets({REF: SECRET})
    server, pki = _server(tmp_path, secrets)
    good = cmp.CmpClient(Direct(server), recipient=pki.ca_name, secret=SECRET, reference=REF, pbm_iterations=500,
                         implicit_confirm=True)
    good.ir(ec_key(), subject=name("nf"))
    salt = good._pbm_salt[1]  # type: ignore[index]
    # a message with the cached salt but MAC'd with a wrong secret
    hdr = builders.request_header(recipient=pki.ca_name, sender_kid=REF)
    msg = cmp.PKIMessage(hdr, cmp.IrBody((builders.cert_request(ec_key(), subject=name("evil")),)))
    bad = cmp.protect_with_pbm(msg, b"not-the-secret", sender_kid=REF, iteration_count=500, salt=salt)
    rsp = cmp.PKIMessage.decode(server.handle(bad.encode()))
    assert isinstance(rsp.body, cmp.ErrorBody)
    assert rsp.body.status_info.fail_info == {FailureInfo.BAD_MESSAGE_CHECK}
    assert secrets.reads == 2


def test_the_key_cache_is_bounded_and_asks_for_the_secret_only_on_a_miss() -> None:
    cache = cmp.PbmKeyCache(max_entries=4)
    calls = []

    def secret() -> bytes:
        calls.append(1)
        return SECRET

    params = [cmp.PBMParameters(salt=bytes([i]) * 16, iteration_count=100) for i in range(6)]
    keys = [cache.get(REF, p, secret) for p in params]
    assert len(calls) == 6 and len(cache) <= 4
    assert keys[0] == cmp.pbm_base_key(SECRET, params[0])
    assert cache.get(REF, params[5], secret) == keys[5] and len(calls) == 6
    assert cache.get(b"other-ref", params[5], secret) == keys[5] and len(calls) == 7  # per reference
