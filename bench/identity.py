"""``cardless bench identity``: agencies' presentations verified per second, on one core.

Our verifier runs the whole check an answer gets in the service (issuer signature, every
disclosure, the key-binding JWT with nonce, audience and freshness, the status list, cached in
memory, and the DCQL answer). In the same run, on the same presentations: the reference
``sd-jwt`` verifier, and raw ES256 verifications, the ceiling being half of those (a
presentation carries two signatures). Every presentation is a different citizen with their own
phone key, each verified once per pass, so no cache of holder keys helps.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time
from collections.abc import Callable
from datetime import date
from typing import Any

import jwt
import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bench.servers import progress
from services.identity import credentials, dcql, holder, sdjwt
from services.identity.statuslist import StatusList, StatusListError
from services.identity.verification import IssuerKeys, Request, Verifier
from shared.auth import VerificationKey

ISSUER = "https://city.example/v1/identity"
VCT = f"{ISSUER}/types/city-id"
CLIENT_ID = f"redirect_uri:{ISSUER}/presentations"
STATUS_URI = f"{ISSUER}/status-lists/1"
KID = "bench-issuer-1"
DISCLOSED = [("age_over_18",), ("resident",)]


def main(options: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="cardless bench identity")
    parser.add_argument("--presentations", type=int, default=6000, help="distinct citizens")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over them, each")
    args = parser.parse_args(options)
    try:
        from sd_jwt.verifier import SDJWTVerifier  # noqa: F401 - the reference, a test extra
    except ImportError:
        raise SystemExit("the reference sd-jwt is a test extra: pip install -e '.[test]'") from None
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    progress(f"issuing and presenting {args.presentations} credentials")
    cases = [_case(issuer_key, n) for n in range(args.presentations)]
    now = int(time.time())
    verifier = _verifier(issuer_key)
    ours, latencies = _best(args.passes, lambda: _ours(verifier, cases, now))
    progress("the reference verifier")
    reference, _ = _best(args.passes, lambda: _reference(issuer_key, cases))
    progress("raw ES256")
    raw, _ = _best(args.passes, lambda: _raw_es256(issuer_key, cases))
    return {
        "bench": "identity",
        "verified_per_s": round(ours),
        "reference_per_s": round(reference),
        "ratio": round(ours / reference, 2),
        "raw_es256_per_s": round(raw),
        "limit_ratio": round(ours / (raw / 2), 2),
        "p99_ms": round(statistics.quantiles(latencies, n=100)[98] * 1000, 3),
        "presentations": args.presentations,
    }


Case = tuple[str, Request]


def _case(issuer_key: ec.EllipticCurvePrivateKey, n: int) -> Case:
    """One citizen's credential, presented for one agency request with its own nonce."""
    phone = ec.generate_private_key(ec.SECP256R1())
    citizen = msgspec.convert(holder.DEMO_CITIZEN, credentials.Citizen)
    now = int(time.time())
    status = {"status_list": {"idx": n, "uri": STATUS_URI}}
    claims = credentials.credential_claims(
        citizen, issuer=ISSUER, vct=VCT, holder=phone.public_key(), status=status,
        issued_on=date.today(), iat=now, exp=now + 86400,
    )  # fmt: skip
    headers = {"kid": KID, "typ": sdjwt.VC_TYP}
    issued = credentials.issue(
        claims, lambda payload: jwt.encode(payload, issuer_key, "ES256", headers=headers)
    )
    nonce = secrets.token_urlsafe(32)
    presentation = sdjwt.present(
        issued, DISCLOSED, holder_key=phone, nonce=nonce, audience=CLIENT_ID, iat=now
    )
    query = dcql.parse(
        {"credentials": [{"id": "city_id", "format": "dc+sd-jwt",
                          "claims": [{"path": list(p)} for p in DISCLOSED]}]},
        default_vct=VCT,
    )  # fmt: skip
    return presentation, Request(f"r{n}", "bench-agency", "bench", query, nonce, now + 3600)


def _verifier(issuer_key: ec.EllipticCurvePrivateKey) -> Verifier:
    keys = IssuerKeys(ISSUER)
    keys.update(ISSUER, (VerificationKey(KID, "ES256", issuer_key.public_key()),))
    statuses = StatusList(1 << 20, bits=2)
    for revoked in range(1 << 19, (1 << 19) + 5000):  # a list with some revocations in it
        statuses[revoked] = 1

    def status_of(reference: Any) -> int:
        if reference.uri != STATUS_URI:
            raise StatusListError("wrong_list")
        return statuses[reference.index]

    return Verifier(client_id=CLIENT_ID, issuer_keys=keys, status_of=status_of,
                    policy=sdjwt.Policy())  # fmt: skip


def _best(passes: int, run: Callable[[], tuple[float, list[float]]]) -> tuple[float, list[float]]:
    """The best of ``passes`` runs (the least disturbed by the rest of the machine)."""
    results = [run() for _ in range(passes)]
    return max(results, key=lambda r: r[0])


def _ours(verifier: Verifier, cases: list[Case], now: int) -> tuple[float, list[float]]:
    latencies = []
    clock = time.perf_counter
    start = clock()
    for presentation, request in cases:
        began = clock()
        outcome = verifier.check({"city_id": [presentation]}, request, now)
        latencies.append(clock() - began)
        if not outcome.verified:
            raise RuntimeError(f"the bench's presentation was refused: {outcome.reason}")
    return len(cases) / (clock() - start), latencies


def _reference(
    issuer_key: ec.EllipticCurvePrivateKey, cases: list[Case]
) -> tuple[float, list[float]]:
    from jwcrypto.jwk import JWK
    from sd_jwt.verifier import SDJWTVerifier

    public = JWK.from_pyca(issuer_key.public_key())
    start = time.perf_counter()
    for presentation, request in cases:
        SDJWTVerifier(
            presentation, lambda _iss, _header: public,
            expected_aud=CLIENT_ID, expected_nonce=request.nonce,
        ).get_verified_payload()  # fmt: skip
    return len(cases) / (time.perf_counter() - start), []


def _raw_es256(
    issuer_key: ec.EllipticCurvePrivateKey, cases: list[Case]
) -> tuple[float, list[float]]:
    """ES256 verifications alone (the issuer-signed JWTs' own signatures, as DER)."""
    signed = []
    for presentation, _ in cases:
        head, payload, signature = presentation.split("~", 1)[0].split(".")
        raw = jwt.utils.base64url_decode(signature)
        der = encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
        signed.append((f"{head}.{payload}".encode(), der))
    public, algorithm = issuer_key.public_key(), ec.ECDSA(hashes.SHA256())
    start = time.perf_counter()
    for message, der in signed:
        public.verify(der, message, algorithm)
    return len(signed) / (time.perf_counter() - start), []
