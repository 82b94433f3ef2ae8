"""KeyStore: the one choke point for private-key and master-key operations (PKCS#11).

CONTRACT (implemented by the hsm work item; other packages code against exactly this):

    ks = KeyStore(TokenConfig(module_path=..., token_label=..., pin=...))
    ks.open()                                  # lazy: also done on first use; per process (fork-safe)
    ks.generate(label, KeyType.EC_P256) -> KeyInfo          # DuplicateLabel if the label exists
    ks.generate(label, KeyType.AES_256, wrappable=False)    # wrappable=True: extractable only wrapped
    ks.import_private_key(label, pem_or_der, password=None) -> KeyInfo   # RSA/EC, becomes non-extractable
    ks.list_keys() -> list[KeyInfo]; ks.get(label) -> KeyInfo (KeyNotFound); ks.exists(label) -> bool
    ks.destroy(label)
    ks.public_key(label) -> cryptography public key
    ks.private_key(label) -> HsmRSAPrivateKey | HsmECPrivateKey  (cryptography ABC subclasses; usable in
                             CertificateBuilder/CSR/CRL/OCSP builders; private_bytes() raises)
    ks.sign(label, data, scheme: SignatureScheme, hash_alg: HashAlg) -> bytes  (DER ECDSA, raw RSA sig)
    ks.encrypt(label, plaintext, aad=b"") -> bytes   # AES-256-GCM: nonce(12) || ciphertext || tag(16)
    ks.decrypt(label, blob, aad=b"") -> bytes        # DecryptionFailed on tag/AAD mismatch
    ks.wrap(kek_label, target_label) -> bytes        # RFC 5649 (CKM_AES_KEY_WRAP_PAD)
    ks.unwrap(kek_label, wrapped, label, KeyType.AES_256) -> KeyInfo   # lands as a non-extractable token key
    ks.status() -> TokenStatus  (cheap; used by readiness)
    ks.close()

Thread-safe within a process; each process (after fork) gets its own PKCS#11 context and login.
Errors: hsm.errors.* only (pkcs11 exceptions never escape).
"""
from __future__ import annotations
