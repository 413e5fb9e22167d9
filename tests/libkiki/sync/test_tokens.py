"""Session tokens: issued and verified with the device's Ed25519 key; every bad one refused."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import jwt
import pytest

from libkiki.errors import ConfigError, InvalidParams, PermissionDenied
from libkiki.sync.tokens import (
    AUDIENCE,
    LEEWAY,
    Revocations,
    SigningKey,
    Verifier,
    valid_session_name,
)

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def verifier(key: SigningKey) -> Verifier:
    return Verifier([key.public_jwk()])


def issue(key: SigningKey, **kw: object) -> str:
    args: dict[str, object] = {"sub": "uid:1000", "iss": "dev1", "ttl": 60, "now": NOW}
    args.update(kw)
    session = str(args.pop("session", "s1"))
    role = str(args.pop("role", "observer"))
    return key.issue(session, role, **args)  # type: ignore[arg-type]


def test_a_token_verifies_with_its_claims(key: SigningKey, verifier: Verifier) -> None:
    token = issue(key, role="controller", jti="abc")
    claims = verifier.verify(token, "s1", now=NOW + 10)
    assert (claims.sid, claims.sub, claims.role, claims.iss, claims.jti) == (
        "s1",
        "uid:1000",
        "controller",
        "dev1",
        "abc",
    )
    assert (claims.iat, claims.exp) == (int(NOW), int(NOW) + 60)
    assert claims.writes
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": key.kid}
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == AUDIENCE


def test_an_expired_token_is_refused(key: SigningKey, verifier: Verifier) -> None:
    token = issue(key)
    verifier.verify(token, "s1", now=NOW + 60 + LEEWAY - 1)
    with pytest.raises(PermissionDenied, match="expired"):
        verifier.verify(token, "s1", now=NOW + 60 + LEEWAY + 1)
    # And by the real clock, long past.
    with pytest.raises(PermissionDenied, match="expired"):
        verifier.verify(token, "s1")


def test_a_token_for_another_session_is_refused(key: SigningKey, verifier: Verifier) -> None:
    with pytest.raises(PermissionDenied, match="another session"):
        verifier.verify(issue(key, session="s2"), "s1", now=NOW)


def test_a_token_for_another_audience_is_refused(key: SigningKey, verifier: Verifier) -> None:
    claims: dict[str, object] = {"iss": "dev1", "aud": "someone-else", "sid": "s1", "sub": "x"}
    claims.update(role="device", iat=int(NOW), exp=int(NOW) + 60, jti="j")
    token = jwt.encode(
        claims,
        key._private,
        algorithm="EdDSA",
        headers={"kid": key.kid},
    )
    with pytest.raises(PermissionDenied, match=r"(?i)audience"):
        verifier.verify(token, "s1", now=NOW)


def test_a_token_signed_by_another_key_is_refused(verifier: Verifier) -> None:
    other = SigningKey.generate()
    with pytest.raises(PermissionDenied, match="unknown key"):
        verifier.verify(issue(other), "s1", now=NOW)
    # Forged: signed by the other key, claiming our key's id.
    mine = next(iter(verifier._keys))
    token = jwt.encode(
        {
            "iss": "dev1",
            "aud": AUDIENCE,
            "sid": "s1",
            "sub": "x",
            "role": "device",
            "iat": int(NOW),
            "exp": int(NOW) + 60,
            "jti": "j",
        },
        other._private,
        algorithm="EdDSA",
        headers={"kid": mine},
    )
    with pytest.raises(PermissionDenied, match=r"[Ss]ignature"):
        verifier.verify(token, "s1", now=NOW)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_a_tampered_token_is_refused(key: SigningKey, verifier: Verifier) -> None:
    header, payload, signature = issue(key, role="observer").split(".")
    claims = json.loads(_unb64(payload))
    claims["role"] = "device"
    tampered = ".".join([header, _b64(json.dumps(claims).encode()), signature])
    with pytest.raises(PermissionDenied, match=r"[Ss]ignature"):
        verifier.verify(tampered, "s1", now=NOW)


def test_alg_none_and_garbage_are_refused(key: SigningKey, verifier: Verifier) -> None:
    header, payload, _ = issue(key).split(".")
    none_header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": key.kid}).encode())
    for token in (f"{none_header}.{payload}.", f"{header}.{payload}.", "garbage", ""):
        with pytest.raises(PermissionDenied):
            verifier.verify(token, "s1", now=NOW)


def test_a_token_missing_a_claim_is_refused(key: SigningKey, verifier: Verifier) -> None:
    token = jwt.encode(
        {"iss": "d", "aud": AUDIENCE, "sid": "s1", "sub": "x", "role": "device", "iat": 1},
        key._private,
        algorithm="EdDSA",
        headers={"kid": key.kid},
    )
    with pytest.raises(PermissionDenied, match="exp"):
        verifier.verify(token, "s1", now=NOW)


def test_issue_checks_its_arguments(key: SigningKey) -> None:
    for bad in ({"session": "a/b"}, {"session": ""}, {"role": "admin"}, {"ttl": 0}):
        with pytest.raises(InvalidParams):
            issue(key, **bad)
    assert valid_session_name("a.B_c-9")
    assert not valid_session_name("x" * 65)


def test_the_key_file_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "state" / "key.pem"
    first = SigningKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = SigningKey.load_or_create(path)
    assert again.kid == first.kid
    assert Verifier([first.public_jwk()]).verify(issue(again), "s1", now=NOW).sub == "uid:1000"
    jwk = first.public_jwk()
    assert (jwk["kty"], jwk["crv"], jwk["kid"]) == ("OKP", "Ed25519", first.kid)
    assert "d" not in jwk
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="0600"):
        SigningKey.load_or_create(path)
    path.chmod(0o600)
    path.write_text("not a key")
    with pytest.raises(ConfigError):
        SigningKey.load_or_create(path)


def test_revocations_persist_and_expire(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    revoked = Revocations(path)
    revoked.revoke("a", exp=int(NOW) + 10, now=NOW)
    revoked.revoke("b", now=NOW)
    assert "a" in revoked
    assert "b" in revoked
    assert "c" not in revoked
    reloaded = Revocations(path)
    assert "a" in reloaded
    assert len(reloaded) == 2
    reloaded.prune(NOW + 10 + LEEWAY + 1)
    assert "a" not in reloaded
    assert "b" in reloaded
    assert "a" not in Revocations(path)


def test_claims_name_the_key_that_signed_them(key: SigningKey) -> None:
    # What a session belongs to: the relay refuses a foreign key on its linked sessions and the
    # edge keeps each key's sessions apart, both by this kid.
    other = SigningKey.generate()
    both = Verifier([key.public_jwk(), other.public_jwk()])
    assert both.verify(issue(key), "s1", now=NOW).kid == key.kid
    assert both.verify(issue(other), "s1", now=NOW).kid == other.kid
    assert key.kid != other.kid
