"""A small REST client for csm (requests-based; imports nothing of the server).

    from client_sdk import CsmClient
    c = CsmClient("https://127.0.0.1:8443", token=open("csm-data/root-token").read().strip(),
                  ca_cert="csm-data/tls/ca.crt")
    c.get("/v1/sys/ready")

TLS verification is on by default (unlike ONAP's onapsmsclient).
"""
from __future__ import annotations

from typing import Any

import requests

from .errors import CsmApiError, TransportError, error_from_problem

TOKEN_HEADER = "X-CSM-Token"


class CsmClient:
    def __init__(
        self,
        addr: str,
        *,
        token: str | None = None,
        ca_cert: str | None = None,
        client_cert: tuple[str, str] | None = None,
        timeout: float = 30.0,
        verify: bool = True,
    ) -> None:
        self.addr = addr.rstrip("/")
        self._session = requests.Session()
        # Passed on every request: requests lets REQUESTS_CA_BUNDLE override a session's verify.
        self._verify: bool | str = ca_cert if (ca_cert and verify) else verify
        self._session.verify = self._verify
        if client_cert:
            self._session.cert = client_cert
        if token:
            self._session.headers[TOKEN_HEADER] = token
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"CsmClient({self.addr!r})"

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None, data: bytes | None = None,
                ok: tuple[int, ...] = ()) -> requests.Response:
        try:
            resp = self._session.request(method, self.addr + path, json=json, params=params, headers=headers,
                                         data=data, timeout=self.timeout, verify=self._verify)
        except requests.exceptions.SSLError as exc:
            raise TransportError(0, "TLS error", f"TLS handshake with {self.addr} failed: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            raise TransportError(0, "unreachable", f"cannot reach {self.addr}: {type(exc).__name__}") from None
        if resp.status_code >= 400 and resp.status_code not in ok:
            try:
                doc = resp.json()
            except ValueError:
                doc = {"detail": resp.text[:200]}
            raise error_from_problem(resp.status_code, doc if isinstance(doc, dict) else {})
        return resp

    def get(self, path: str, **kw: Any) -> Any:
        return _json(self.request("GET", path, **kw))

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return _json(self.request("POST", path, json=body, **kw))

    def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return _json(self.request("PUT", path, json=body, **kw))

    def patch(self, path: str, body: Any = None, **kw: Any) -> Any:
        return _json(self.request("PATCH", path, json=body, **kw))

    def delete(self, path: str, **kw: Any) -> Any:
        return _json(self.request("DELETE", path, **kw))

    # ---- tokens & policies -------------------------------------------------------------
    def create_token(self, policies: list[str] | None = None, *, ttl: int | None = None,
                     max_ttl: int | None = None, display_name: str = "", renewable: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {"policies": policies or [], "display_name": display_name, "renewable": renewable}
        if ttl is not None:
            body["ttl"] = ttl
        if max_ttl is not None:
            body["max_ttl"] = max_ttl
        return self.post("/v1/auth/tokens", body)  # type: ignore[no-any-return]

    def lookup_token(self, accessor: str | None = None) -> dict[str, Any]:
        return self.get(f"/v1/auth/tokens/{accessor}" if accessor else "/v1/auth/tokens/self")  # type: ignore[no-any-return]

    def renew_token(self, accessor: str | None = None, increment: int | None = None) -> dict[str, Any]:
        path = f"/v1/auth/tokens/{accessor}/renew" if accessor else "/v1/auth/tokens/self/renew"
        return self.post(path, {"increment": increment} if increment else {})  # type: ignore[no-any-return]

    def revoke_token(self, accessor: str) -> None:
        self.delete(f"/v1/auth/tokens/{accessor}")

    def write_policy(self, name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        return self.put(f"/v1/sys/policies/{name}", {"rules": rules})  # type: ignore[no-any-return]

    def read_policy(self, name: str) -> dict[str, Any]:
        return self.get(f"/v1/sys/policies/{name}")  # type: ignore[no-any-return]

    def list_policies(self) -> list[str]:
        return self.get("/v1/sys/policies")["names"]  # type: ignore[no-any-return]

    def delete_policy(self, name: str) -> None:
        self.delete(f"/v1/sys/policies/{name}")

    def ready(self) -> dict[str, Any]:
        return _json(self.request("GET", "/v1/sys/ready", ok=(503,)))  # type: ignore[no-any-return]


def _json(resp: requests.Response) -> Any:
    if resp.status_code == 204 or not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        raise CsmApiError(resp.status_code, "bad response", "the service answered with a non-JSON body") from None
