"""CMPv2 front end of the CA (RFC 4210/9480 over HTTP per RFC 6712, Lightweight CMP RFC 9483).

The protocol logic is :class:`ca.cmp.CmpServer`; this package stores CMP profiles (aliases) and
transactions in the service database and serves them: ``models`` (tables), ``store`` (the SQL
TransactionStore and the profile repository, shared secrets sealed in the token), ``service``
(one CmpServer per profile, approvals, the confirm-timeout sweeper; no Flask), ``views``
(``/.well-known/cmp`` and the management API ``/v1/cmp``), ``cli`` (`csm cmp`).
"""
