"""Helpers for the CA service tests (HTTP-agnostic: they take a requests-like or Flask client)."""
from __future__ import annotations

from typing import Any

from cryptography import x509


def create_root(client: Any, headers: dict[str, str], name: str, **extra: Any) -> dict[str, Any]:
    r = client.post("/v1/ca", json={"name": name, "subject": f"CN={name} Root,O=csm test", **extra}, headers=headers)
    assert r.status_code == 201, r.get_data(as_text=True)
    return dict(r.get_json())


def create_intermediate(client: Any, headers: dict[str, str], name: str, parent: str, **extra: Any) -> dict[str, Any]:
    r = client.post("/v1/ca", json={"type": "intermediate", "name": name, "parent": parent,
                                    "subject": f"CN={name} Issuing CA,O=csm test", **extra}, headers=headers)
    assert r.status_code == 201, r.get_data(as_text=True)
    return dict(r.get_json())


def load_chain(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)
