"""Provenance: Ed25519 signatures of an artifact's manifest, and who may be trusted.

A key says which inputs an artifact claims; its manifest binds every shard by sha256. Neither says
who produced the shards: anyone can recompute sha256s of forged values under a legitimate key. A
signature over the manifest's exact bytes does: it names the signer (a name and the sha256 of its
public key) and verifies only with that key. `signatures.json` sits beside the manifest, travels with
push and pull, and holds one entry per signer. A trust folder is a set of `NAME.pub` files (PEM),
handed out by the teams whose artifacts one accepts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

from adpa.artifacts.fsutil import atomic_write_bytes
from adpa.artifacts.store import MANIFEST, StoreError, now_iso

SIGNATURES = "signatures.json"
FORMAT = "adpa.signatures"
MAX_SIGNATURES_BYTES = 1 << 20
SIGNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class SignatureError(StoreError):
    """A signature that is missing, malformed, or not by a trusted key; one line naming the artifact."""


def _crypto():
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    return serialization, Ed25519PrivateKey, Ed25519PublicKey, InvalidSignature


def public_fingerprint(public_key) -> str:
    serialization, *_ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def keygen(name: str, folder: Path) -> tuple[Path, Path]:
    """A new signing key: `folder/NAME.key` (private, mode 0600) and `folder/NAME.pub` (to hand out)."""
    serialization, Ed25519PrivateKey, *_ = _crypto()
    if not SIGNER_RE.match(name):
        raise SignatureError(f"signer name {name!r}: letters, digits and . _ @ - only, at most 64")
    folder.mkdir(parents=True, exist_ok=True)
    priv, pub = folder / f"{name}.key", folder / f"{name}.pub"
    for p in (priv, pub):  # a public key handed out is as much someone's as the private one
        if os.path.lexists(p):
            raise SignatureError(f"{p} exists; a signing key is never overwritten (choose another name or --out)")
    key = Ed25519PrivateKey.generate()
    _write_new(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write_new(pub, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    return priv, pub


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `data`; never replaces a file (O_EXCL), even one made after the check above."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _load_private(path: Path):
    serialization, Ed25519PrivateKey, *_ = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"{path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 key")
    return key


def trusted_keys(folder: Path) -> dict[str, tuple[str, object]]:
    """fingerprint -> (signer name, public key) for every `NAME.pub` in a trust folder."""
    serialization, _, Ed25519PublicKey, _ = _crypto()
    folder = Path(folder)
    if not folder.is_dir():
        raise SignatureError(f"trust folder {folder}: no such folder")
    out = {}
    for p in sorted(folder.glob("*.pub")):
        try:
            key = serialization.load_pem_public_key(p.read_bytes())
        except ValueError as e:
            raise SignatureError(f"{p}: not a PEM public key ({e})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError(f"{p}: not an Ed25519 public key")
        out[public_fingerprint(key)] = (p.stem, key)
    if not out:
        raise SignatureError(f"trust folder {folder} holds no NAME.pub key")
    return out


def read_signatures(artifact_dir: Path) -> list[dict]:
    """The signature entries beside a manifest ([] when unsigned), checked for shape and size."""
    p = Path(artifact_dir) / SIGNATURES
    if not p.exists():
        return []
    if p.stat().st_size > MAX_SIGNATURES_BYTES:
        raise SignatureError(f"{p}: larger than {MAX_SIGNATURES_BYTES} bytes")
    try:
        doc = json.loads(p.read_bytes())
    except (ValueError, RecursionError):
        raise SignatureError(f"{p}: not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("signatures"), list):
        raise SignatureError(f"{p}: not an {FORMAT} file")
    for s in doc["signatures"]:
        if not (isinstance(s, dict) and isinstance(s.get("signer"), str) and SIGNER_RE.match(s["signer"])
                and all(isinstance(s.get(k), str) for k in ("public_key_sha256", "signature", "manifest_sha256"))):
            raise SignatureError(f"{p}: a malformed signature entry")
    return doc["signatures"]


def sign(artifact_dir: Path, key_file: Path) -> dict:
    """Sign the artifact's manifest bytes with `key_file`; the signer's name is the key file's name."""
    d = Path(artifact_dir)
    manifest = (d / MANIFEST).read_bytes()
    key = _load_private(key_file)
    entry = {"signer": Path(key_file).stem, "algorithm": "ed25519",
             "public_key_sha256": public_fingerprint(key.public_key()),
             "manifest_sha256": hashlib.sha256(manifest).hexdigest(), "signed": now_iso(),
             "signature": base64.b64encode(key.sign(manifest)).decode()}
    if not SIGNER_RE.match(entry["signer"]):
        raise SignatureError(f"{key_file}: the file name is the signer's name: letters, digits and . _ @ - only")
    others = [s for s in read_signatures(d) if s["public_key_sha256"] != entry["public_key_sha256"]]
    atomic_write_bytes(d / SIGNATURES, json.dumps({"format": FORMAT, "signatures": others + [entry]},
                                                  indent=1).encode())
    return entry


def check_trusted(artifact_dir: Path, trust: dict) -> dict:
    """The first signature over these exact manifest bytes by a key in `trust`; SignatureError otherwise."""
    *_, InvalidSignature = _crypto()
    d = Path(artifact_dir)
    manifest = (d / MANIFEST).read_bytes()
    entries = read_signatures(d)
    if not entries:
        raise SignatureError(f"{d.name} is not signed; a trusted signer is required")
    for s in entries:
        if s["public_key_sha256"] not in trust:
            continue
        name, key = trust[s["public_key_sha256"]]
        try:
            key.verify(base64.b64decode(s["signature"], validate=True), manifest)
        except (InvalidSignature, ValueError):
            raise SignatureError(f"{d.name}: the signature of {name} does not verify over this manifest "
                                 f"(altered after signing, or forged)") from None
        return s | {"trusted_as": name}
    signers = ", ".join(sorted({s["signer"] for s in entries}))
    raise SignatureError(f"{d.name} is signed by {signers}, none of them a key of the trust folder")
