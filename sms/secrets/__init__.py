"""Secret management: domains of versioned key/value secrets, every value sealed with
AES-256-GCM under a per-domain data key that exists in plaintext only inside the token.

Modules: ``errors`` (leaves of CsmError), ``limits`` (input validation and the documented
limits), ``store`` (the SecretStore seam and its records), ``backends.sql`` /
``backends.vault`` (implementations), ``envelope`` (the one choke point for encryption),
``service`` (the feature's logic; no Flask), ``views`` (native REST), ``onap`` (ONAP AAF SMS
compatible routes), ``certauth`` (client-certificate identities), ``cli`` (`csm secrets`).
"""
