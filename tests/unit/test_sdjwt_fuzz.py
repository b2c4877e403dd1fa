"""Fuzzing the SD-JWT verifier, which reads whatever a phone sends: the only failure is
``Rejected``, no tampering turns a valid presentation into one accepted with other claims, and
a holder who discloses some claims shows the verifier exactly those."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import string
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.identity.sdjwt import (
    NEVER_DISCLOSABLE,
    REASONS,
    IssuerKey,
    Policy,
    Rejected,
    Verified,
    conceal,
    issuance,
    present,
    process,
    verify,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "sd-jwt"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE64URL = string.ascii_letters + string.digits + "-_"
# Characters a mutation may write: the alphabet itself, the separators, the standard
# alphabet's extras, padding, whitespace, a control character and non-ASCII text.
STRAYS = BASE64URL + ".~+/= \n\x00é李"
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return loaded


def issuer_key(jwk: dict[str, Any]) -> IssuerKey:
    key = jwt.PyJWK(jwk, "ES256").key
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return IssuerKey(key, "ES256")


class Vector:
    """A published presentation and everything needed to verify it as its file says."""

    def __init__(self, name: str, *, require_vc: bool) -> None:
        case = load(name)
        self.presentation: str = case["sd_jwt_presentation"]
        self.key = issuer_key(case["issuer_public_jwk"])
        given = case["verify_with"]
        self.nonce, self.audience = given["expected_nonce"], given["expected_aud"]
        self.now, self.policy = given["verification_time"], Policy(require_vc=require_vc)
        self.verified = self.attempt(self.presentation)
        assert self.verified is not None

    def attempt(self, presentation: str) -> Verified | None:
        """The verifier's answer: claims, or None when it refuses (and only ever refuses)."""
        try:
            return verify(
                presentation,
                issuer_keys=lambda header, payload: self.key,
                nonce=self.nonce,
                audience=self.audience,
                now=self.now,
                policy=self.policy,
            )
        except Rejected as refused:
            reason, detail = refused.reason, refused.detail
        assert reason in REASONS
        assert detail
        return None


VECTORS = {
    "rfc9901-s5": Vector("rfc9901/s5-simple.json", require_vc=False),
    "sd-jwt-vc-pid": Vector("sd-jwt-vc/pid-aendgard.json", require_vc=True),
}
S5 = VECTORS["rfc9901-s5"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64_json(value: Any) -> str:
    return b64(json.dumps(value, ensure_ascii=False).encode())


# -- Anything at all ------------------------------------------------------------------------


@FUZZ
@given(st.text())
@example("")
@example("~")
@example("~~")
@example("..~")
@example("a.b.c~")
@example("e30.e30.~")
@example("e30.e30.AA~" + "~" * 3)
def test_arbitrary_text_is_refused_and_nothing_else(text: str) -> None:
    assert S5.attempt(text) is None


@FUZZ
@given(st.text(alphabet=BASE64URL + ".~", max_size=600))
def test_text_shaped_like_an_sd_jwt_is_refused_and_nothing_else(text: str) -> None:
    assert S5.attempt(text) is None


@st.composite
def forged_tokens(draw: st.DrawFn) -> str:
    """Well-formed compact JWS around random JSON: they reach the algorithm, key and signature
    checks, and a random signature never verifies."""
    header = draw(
        st.fixed_dictionaries(
            {"alg": st.sampled_from(["ES256", "EdDSA", "none", "HS256"]) | JSON},
            optional={"typ": st.sampled_from(["dc+sd-jwt", "example+sd-jwt", "kb+jwt"]) | JSON},
        )
    )
    payload = draw(st.dictionaries(st.text(max_size=8), JSON, max_size=6))
    signature = draw(st.binary(max_size=70))
    return ".".join([b64_json(header), b64_json(payload), b64(signature)])


@FUZZ
@given(
    issuer=forged_tokens(),
    disclosures=st.lists(JSON.map(b64_json), max_size=4),
    kb=forged_tokens() | st.just(""),
)
def test_forged_tokens_around_random_json_are_refused_and_nothing_else(
    issuer: str, disclosures: list[str], kb: str
) -> None:
    assert S5.attempt("~".join([issuer, *disclosures, kb])) is None


# -- Tampering with a valid presentation ----------------------------------------------------


@st.composite
def tampered(draw: st.DrawFn, original: str) -> str:
    """``original`` with characters flipped, inserted or deleted; its Disclosures dropped,
    repeated or reordered; all its ~-parts shuffled; or a JWS segment or a Disclosure swapped
    for base64url of random JSON."""
    parts = original.split("~")
    kind = draw(st.sampled_from(["flip", "insert", "delete", "selection", "shuffle", "json"]))
    if kind in ("flip", "insert", "delete"):
        at = draw(st.integers(0, len(original) - 1))
        if kind == "delete":
            return original[:at] + original[at + draw(st.integers(1, 8)) :]
        stray = draw(st.sampled_from(STRAYS))
        return original[:at] + stray + original[at + (kind == "flip") :]
    if kind == "selection":
        chosen = draw(st.lists(st.sampled_from(parts[1:-1]), max_size=len(parts)))
        return "~".join([parts[0], *chosen, parts[-1]])
    if kind == "shuffle":
        return "~".join(draw(st.permutations(parts)))
    at = draw(st.integers(0, len(parts) - 1))
    if 0 < at < len(parts) - 1:  # a Disclosure
        parts[at] = draw(st.lists(JSON, max_size=4).map(b64_json))
    else:
        segments = parts[at].split(".")
        segments[draw(st.integers(0, len(segments) - 1))] = draw(JSON.map(b64_json))
        parts[at] = ".".join(segments)
    return "~".join(parts)


@pytest.mark.parametrize("name", sorted(VECTORS))
@FUZZ
@given(data=st.data())
def test_a_tampered_presentation_is_refused_unless_the_change_was_a_no_op(
    name: str, data: st.DataObject
) -> None:
    vector = VECTORS[name]
    assert vector.verified is not None
    mutated = data.draw(tampered(vector.presentation))
    verified = vector.attempt(mutated)
    if verified is not None:
        assert verified == vector.verified


@st.composite
def digest_trees(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """A payload of random JSON with digests (of Disclosures of random shapes, of nothing, or
    repeated) spliced into its objects and arrays: every branch of the processing is reached."""
    disclosures = [
        b64_json(content)
        for content in draw(
            st.lists(
                st.lists(JSON, min_size=1, max_size=2).map(lambda rest: ["salt", *rest])
                | st.tuples(
                    st.just("salt"), st.sampled_from(["a", "_sd", "...", "b", "vct"]), JSON
                ).map(list)
                | JSON,
                max_size=5,
            )
        )
    ]
    digests = [b64(hashlib.sha256(d.encode()).digest()) for d in disclosures]
    unknown = st.text(alphabet=BASE64URL, min_size=43, max_size=43)
    pool = st.sampled_from(digests) | unknown if digests else unknown
    payload = draw(st.dictionaries(st.sampled_from(["a", "b", "c", "iss"]), JSON, max_size=4))
    payload["_sd"] = draw(st.lists(pool, max_size=5))
    payload["list"] = draw(st.lists(pool.map(lambda digest: {"...": digest}) | JSON, max_size=4))
    nested = draw(st.lists(pool, max_size=3))
    payload["nested"] = {"_sd": nested, "x": [{"...": d} for d in nested[:1]]}
    sent = draw(st.lists(st.sampled_from(disclosures), max_size=6)) if disclosures else []
    return payload, sent


@FUZZ
@given(digest_trees())
def test_processing_random_disclosure_trees_refuses_and_never_crashes(
    tree: tuple[dict[str, Any], list[str]],
) -> None:
    payload, disclosures = tree
    try:
        claims = process(payload, disclosures)
    except Rejected as refused:
        reason = refused.reason
    else:
        assert "_sd" not in walk_keys(claims)
        assert "_sd_alg" not in claims
        return
    assert reason in REASONS


@pytest.mark.parametrize("depth", [40, 5000])
def test_a_disclosure_nested_too_deeply_is_refused_as_malformed(depth: int) -> None:
    # Past our limit, and (at 5000) past the JSON decoder's: neither ends in a RecursionError.
    deep = '{"down":[' * depth + '"bottom"' + "]}" * depth
    buried = b64(f'["salt","deep",{deep}]'.encode())
    digest = b64(hashlib.sha256(buried.encode()).digest())
    with pytest.raises(Rejected) as refused:
        process({"_sd": [digest]}, [buried])
    assert refused.value.reason == "malformed"


def walk_keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [*value, *(key for inner in value.values() for key in walk_keys(inner))]
    if isinstance(value, list):
        return [key for inner in value for key in walk_keys(inner)]
    return []


# -- Disclose what you choose, see what was disclosed ---------------------------------------

ISSUER = ec.generate_private_key(ec.SECP256R1())
WALLET = ec.generate_private_key(ec.SECP256R1())
WALLET_JWK = jwt.algorithms.ECAlgorithm.to_jwk(WALLET.public_key(), as_dict=True)
NOW = 1_790_000_000
CLEAR = {
    "iss": "https://id.cardless.example",
    "iat": NOW - 60,
    "exp": NOW + 86_400,
    "vct": "https://credentials.cardless.example/city_id",
    "cnf": {"jwk": WALLET_JWK},
}
NAMES = st.text(alphabet=string.ascii_lowercase + "_éø李", min_size=1, max_size=6).filter(
    lambda name: name not in {*NEVER_DISCLOSABLE, *CLEAR, "_sd", "_sd_alg"}
)
PLAIN_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def citizens(
    draw: st.DrawFn,
) -> tuple[dict[str, Any], list[tuple[str, ...]], list[tuple[str, ...]]]:
    """Claims, the paths the issuer makes disclosable, and the paths the holder discloses."""
    claims: dict[str, Any] = draw(st.dictionaries(NAMES, PLAIN_JSON, max_size=5))
    claims |= draw(
        st.dictionaries(
            NAMES, st.dictionaries(NAMES, PLAIN_JSON, min_size=1, max_size=3), max_size=2
        )
    )
    paths: list[tuple[str, ...]] = [(name,) for name in claims] + [
        (name, member)
        for name, value in claims.items()
        if isinstance(value, dict)
        for member in value
    ]
    hidden = draw(st.lists(st.sampled_from(paths), unique=True)) if paths else []
    shown = draw(st.lists(st.sampled_from(hidden), unique=True)) if hidden else []
    return claims, hidden, shown


def seen_by_verifier(
    claims: dict[str, Any], hidden: list[tuple[str, ...]], shown: list[tuple[str, ...]]
) -> dict[str, Any]:
    """The claims minus every hidden path the holder did not disclose (nor need as a parent)."""
    disclosed = {path[:end] for path in shown for end in range(1, len(path) + 1)}
    expected = copy.deepcopy(claims)
    for path in sorted(hidden, key=len):
        parent = expected
        for name in path[:-1]:
            parent = parent.get(name, {})
        if path not in disclosed:
            parent.pop(path[-1], None)
    return expected


@FUZZ
@given(citizens(), st.integers(0, 5))
def test_the_verifier_sees_exactly_the_claims_the_holder_disclosed(
    citizen: tuple[dict[str, Any], list[tuple[str, ...]], list[tuple[str, ...]]], decoys: int
) -> None:
    claims, hidden, shown = citizen
    payload, disclosures = conceal({**CLEAR, **claims}, hidden, decoys=decoys)
    token = jwt.encode(payload, ISSUER, algorithm="ES256", headers={"typ": "dc+sd-jwt"})
    presentation = present(
        issuance(token, disclosures), shown, holder_key=WALLET, nonce="n", audience="a", iat=NOW
    )
    key = IssuerKey(ISSUER.public_key(), "ES256")
    verified = verify(
        presentation, issuer_keys=lambda header, payload: key, nonce="n", audience="a", now=NOW
    )
    assert verified.claims == {**CLEAR, **seen_by_verifier(claims, hidden, shown)}
    assert verified.key_bound
