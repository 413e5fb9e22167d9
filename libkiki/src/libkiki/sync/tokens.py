"""Session tokens: JWTs (RFC 7519) signed with the device's Ed25519 key (``alg`` EdDSA).

The device relay and the edge verify the same format with the same key material: the device
holds the private key (a PEM file, mode 0600, in its state directory) and hands verifiers its
public key as a JWK (OKP/Ed25519, with a ``kid``). Signing, verifying and the JWK codec are
PyJWT's (with ``cryptography``); nothing here parses a token by hand.

Claims (the sync contract): ``iss`` the device id, ``aud`` ``"kiki-sync"``, ``sid`` the session
name, ``sub`` who holds it, ``role`` one of :data:`ROLES`, ``iat``, ``exp`` and ``jti`` (a unique
id, what revocation names). Every failure to verify is a :class:`PermissionDenied`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm

from libkiki.errors import ConfigError, InvalidParams, PermissionDenied

AUDIENCE: Final = "kiki-sync"
ALGORITHM: Final = "EdDSA"
ROLES: Final = ("observer", "controller", "device")
WRITERS: Final = frozenset({"controller", "device"})
SESSION_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
KEY_FILE: Final = "sync-signing-key.pem"
# Clocks of the device and a verifier at the edge may differ by this much.
LEEWAY: Final = 30.0
MAX_TTL: Final = 366 * 86400
MAX_CLAIM: Final = 256  # characters of a token's sub and jti, as the edge
_REQUIRED: Final = ["iss", "aud", "sid", "sub", "role", "iat", "exp", "jti"]


def valid_session_name(name: str) -> bool:
    return SESSION_NAME.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class Claims:
    iss: str
    sid: str
    sub: str
    role: str
    iat: int
    exp: int
    jti: str
    # The verified key's id: whose key signed it, which is what a session belongs to (a relay's
    # linked sessions take only its own key; the edge keeps each key's sessions apart).
    kid: str = ""

    @property
    def writes(self) -> bool:
        return self.role in WRITERS


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(public: Ed25519PublicKey) -> str:
    """The RFC 7638 thumbprint of the public JWK: the same key always has the same ``kid``."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}, separators=(",", ":"), sort_keys=True
    )
    return _b64(hashlib.sha256(canonical.encode()).digest())


class SigningKey:
    """The device's Ed25519 key: issues tokens, exports its public half."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.kid = key_id(self.public)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """The key in ``path`` (PEM, PKCS#8), created there with mode 0600 if missing."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            key = cls.generate()
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            pem = key._private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            # O_EXCL: two starts racing keep one key, the loser reads the winner's.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return cls.load_or_create(path)
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
                out.flush()
                os.fsync(out.fileno())
            return key
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path} is readable by others; it must be mode 0600")
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except ValueError as exc:
            raise ConfigError(f"{path} is not a PEM private key: {exc}") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"{path} does not hold an Ed25519 key")
        return cls(private)

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(OKPAlgorithm.to_jwk(self.public))
        jwk.update(kid=self.kid, alg=ALGORITHM, use="sig")
        return jwk

    def issue(
        self,
        session: str,
        role: str,
        *,
        sub: str,
        iss: str,
        ttl: float = 3600,
        now: float | None = None,
        jti: str | None = None,
    ) -> str:
        if not valid_session_name(session):
            raise InvalidParams(f"not a session name: {session!r} (1-64 of A-Z a-z 0-9 . _ -)")
        if role not in ROLES:
            raise InvalidParams(f"not a role: {role!r} (one of {', '.join(ROLES)})")
        if not 0 < ttl <= MAX_TTL:
            raise InvalidParams(f"a token's ttl must be positive and at most {MAX_TTL} s")
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": iss,
            "aud": AUDIENCE,
            "sid": session,
            "sub": sub,
            "role": role,
            "iat": issued,
            "exp": issued + max(1, int(ttl)),
            # Hex: an id a person passes on a command line never starts with '-'.
            "jti": jti or secrets.token_hex(16),
        }
        return jwt.encode(
            claims, self._private, algorithm=ALGORITHM, headers={"kid": self.kid, "typ": "JWT"}
        )


class Verifier:
    """Verifies tokens against trusted public keys (JWKs, chosen by ``kid``)."""

    def __init__(self, keys: Iterable[Mapping[str, Any] | Ed25519PublicKey]) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for key in keys:
            if isinstance(key, Ed25519PublicKey):
                public = key
            else:
                loaded = OKPAlgorithm.from_jwk(dict(key))
                if not isinstance(loaded, Ed25519PublicKey):
                    raise ConfigError("a trusted key must be a public Ed25519 JWK")
                public = loaded
            self._keys[key_id(public)] = public

    def verify(self, token: str, session: str, *, now: float | None = None) -> Claims:
        """The claims of ``token`` for ``session``, or :class:`PermissionDenied` saying why."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise PermissionDenied(f"not a token: {exc}") from None
        if header.get("alg") != ALGORITHM:
            raise PermissionDenied(f"token algorithm {header.get('alg')!r} is not {ALGORITHM}")
        kid = str(header.get("kid"))
        public = self._keys.get(kid)
        if public is None:
            raise PermissionDenied("token signed by an unknown key")
        # PyJWT reads the clock itself; a given ``now`` (tests, replays) is checked below.
        by_clock = now is None
        options: jwt.types.Options = {
            "require": _REQUIRED,
            "verify_exp": by_clock,
            "verify_iat": by_clock,
        }
        try:
            claims = jwt.decode(
                token,
                public,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                leeway=LEEWAY,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise PermissionDenied("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise PermissionDenied(f"token refused: {exc}") from None
        if now is not None and now > float(claims["exp"]) + LEEWAY:
            raise PermissionDenied("token expired")
        if len(str(claims["sub"])) > MAX_CLAIM or len(str(claims["jti"])) > MAX_CLAIM:
            # The edge keeps them in each socket's 2 KiB attachment: the same cap on both ends.
            raise PermissionDenied(f"token sub or jti over {MAX_CLAIM} characters")
        if claims["sid"] != session:
            raise PermissionDenied("token is for another session")
        if claims["role"] not in ROLES:
            raise PermissionDenied(f"token has an unknown role {claims['role']!r}")
        return Claims(
            iss=str(claims["iss"]),
            sid=str(claims["sid"]),
            sub=str(claims["sub"]),
            role=str(claims["role"]),
            iat=int(claims["iat"]),
            exp=int(claims["exp"]),
            jti=str(claims["jti"]),
            kid=kid,
        )


class Revocations:
    """Revoked token ids, each kept until its token would have expired anyway.

    Stored as JSON (``{jti: exp}``) in ``path`` when given, rewritten atomically on each change.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._revoked: dict[str, int] = {}
        if path is not None and path.exists():
            try:
                loaded = json.loads(path.read_text())
            except ValueError as exc:
                raise ConfigError(f"{path} is not a revocation list: {exc}") from exc
            self._revoked = {str(k): int(v) for k, v in loaded.items()}

    def __contains__(self, jti: object) -> bool:
        return jti in self._revoked

    def __len__(self) -> int:
        return len(self._revoked)

    def revoke(self, jti: str, exp: int | None = None, *, now: float | None = None) -> None:
        """Revoke ``jti``; without its ``exp`` (unknown to who names only the id) it is kept
        for :data:`MAX_TTL`, the longest a token is issued for."""
        at = time.time() if now is None else now
        self._revoked[jti] = int(at + MAX_TTL) if exp is None else exp
        self.prune(at)

    def prune(self, now: float) -> None:
        self._revoked = {j: e for j, e in self._revoked.items() if e + LEEWAY >= now}
        self._save()

    def _save(self) -> None:
        if self._path is None:
            return
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self._revoked, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self._path)
