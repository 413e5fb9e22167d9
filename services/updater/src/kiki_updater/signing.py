"""Commit signatures: ed25519 in ostree's own detached-metadata format, checked here, and GPG,
which Debian's libostree checks itself.

ed25519 as ``ostree sign`` writes it: the commit's detached metadata holds
``ostree.sign.ed25519`` of type ``aay``, each entry a 64-byte signature over the commit object's
bytes (the serialized commit variant whose sha256 is the commit checksum). Keys are base64:
public 32 bytes, secret 64 (the seed, then the public key). Debian's ostree is built without
libsodium and cannot check them; a Fedora device's ostree can (``sign-verify=true``,
``verification-ed25519-file``), and Kiki checks them itself before deploying anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kiki_updater.gio import lib
from libkiki.errors import InvalidParams, PermissionDenied

__all__ = [
    "ED25519_KEY",
    "SignatureRefused",
    "commit_bytes",
    "generate_keypair",
    "gpg_sign_commit",
    "gpg_sign_summary",
    "sign_commit",
    "verify_commit",
]

ED25519_KEY = "ostree.sign.ed25519"
SIGNATURE_SIZE = 64
MAX_SIGNATURES = 16


class SignatureRefused(PermissionDenied):
    """A commit with no signature, a wrong one, or one by a key this device does not trust."""


def generate_keypair() -> tuple[str, str]:
    """A new key pair in ostree's base64 forms: (secret, public)."""
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes_raw()
    public = key.public_key().public_bytes_raw()
    return base64.b64encode(seed + public).decode(), base64.b64encode(public).decode()


def public_of(secret_b64: str) -> str:
    """The base64 public key of a base64 secret key."""
    return base64.b64encode(_secret(secret_b64).public_key().public_bytes_raw()).decode()


def _secret(secret_b64: str) -> Ed25519PrivateKey:
    try:
        raw = base64.b64decode(secret_b64.strip(), validate=True)
    except binascii.Error:
        raise InvalidParams("an ed25519 secret key is base64") from None
    if len(raw) not in (32, 64):
        raise InvalidParams("an ed25519 secret key is 64 bytes (seed and public key)")
    return Ed25519PrivateKey.from_private_bytes(raw[:32])


def _public(public_b64: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(public_b64.strip(), validate=True)
    except binascii.Error:
        raise InvalidParams("an ed25519 public key is base64") from None
    if len(raw) != 32:
        raise InvalidParams("an ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def commit_bytes(repo: Any, commit: str) -> bytes:
    L = lib()
    _, variant = repo.load_variant(L.OSTree.ObjectType.COMMIT, commit)
    data: bytes = variant.get_data_as_bytes().get_data()
    return data


def _detached(repo: Any, commit: str) -> dict[str, Any]:
    _, meta = repo.read_commit_detached_metadata(commit, None)
    return dict(meta.unpack()) if meta is not None else {}


def sign_commit(repo: Any, commit: str, secret_b64: str) -> None:
    """Add an ed25519 signature to the commit's detached metadata (others are kept)."""
    L = lib()
    GLib = L.GLib
    signature = _secret(secret_b64).sign(commit_bytes(repo, commit))
    _, meta = repo.read_commit_detached_metadata(commit, None)
    entries: dict[str, Any] = {}
    if meta is not None:
        for i in range(meta.n_children()):
            entry = meta.get_child_value(i)
            entries[entry.get_child_value(0).get_string()] = entry.get_child_value(1).get_variant()
    old = entries.get(ED25519_KEY)
    signatures = [bytes(s) for s in old.unpack()] if old is not None else []
    signatures.append(signature)
    entries[ED25519_KEY] = GLib.Variant("aay", signatures)
    repo.write_commit_detached_metadata(commit, GLib.Variant("a{sv}", entries), None)


def verify_commit(repo: Any, commit: str, public_keys: tuple[str, ...]) -> str:
    """The trusted key (base64) that signed ``commit``; raises :class:`SignatureRefused` when
    none did. The commit's bytes are checked against its checksum first, so a signature binds
    the checksum that is deployed."""
    if not public_keys:
        raise SignatureRefused("no ed25519 key is trusted for this remote")
    data = commit_bytes(repo, commit)
    if hashlib.sha256(data).hexdigest() != commit:
        raise SignatureRefused(f"commit {commit[:12]} does not match its checksum")
    signatures = _detached(repo, commit).get(ED25519_KEY)
    if not signatures:
        raise SignatureRefused(f"commit {commit[:12]} is not signed")
    keys = [(k, _public(k)) for k in public_keys]
    for signature in list(signatures)[:MAX_SIGNATURES]:
        raw = bytes(signature)
        if len(raw) != SIGNATURE_SIZE:
            continue
        for text, key in keys:
            try:
                key.verify(raw, data)
            except InvalidSignature:
                continue
            return text
    raise SignatureRefused(f"commit {commit[:12]} is signed by no trusted key")


def gpg_sign_commit(repo: Any, commit: str, key_id: str, homedir: Path) -> None:
    repo.sign_commit(commit, key_id, str(homedir), None)


def gpg_sign_summary(repo: Any, key_id: str, homedir: Path) -> None:
    repo.add_gpg_signature_summary([key_id], str(homedir), None)
