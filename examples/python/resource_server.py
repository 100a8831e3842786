#!/usr/bin/env python3
"""Check a stepgate step token the way a resource server would, in Python.

1. Fetch the signing keys over NATS (stepgate.v1.jwks, JSON).
2. Verify the token with PyJWT: EdDSA only, the key named by the token's
   `kid`, issuer `stepgate`, the audience this server answers to, not
   expired, not before `nbf`.
3. Check that the required scope is in the space-separated `scope` claim.
4. Ask stepgate.v1.token.introspect (RFC 7662) whether the token is still
   active: a step token is revoked as soon as its step completes or fails,
   long before it expires.

Prints the token's claims as JSON and exits 0 when the token is accepted;
prints one line saying why on stderr and exits 1 when it is refused; exits
2 when the check could not be made (bad usage, NATS or stepgate unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import jwt
import nats
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

PREFIX = "stepgate.v1"
ISSUER = "stepgate"
TOKEN_TYPE = "stepgate-step+jwt"
JSON_HEADERS = {"Content-Type": "application/json"}


class Refused(Exception):
    """The token is not accepted: exit 1."""


class Unavailable(Exception):
    """The check could not be made: exit 2."""


async def call(nc, op: str, payload: dict, timeout: float) -> dict:
    subject = f"{PREFIX}.{op}"
    try:
        msg = await nc.request(
            subject, json.dumps(payload).encode(), timeout=timeout, headers=JSON_HEADERS
        )
    except NoRespondersError as e:
        raise Unavailable(f"no stepgate engine serves {subject}") from e
    except NatsTimeoutError as e:
        raise Unavailable(f"{subject}: no answer within {timeout:g} s") from e
    reply = json.loads(msg.data)
    if reply.get("reply") == "error":
        raise Unavailable(f"{subject}: {reply.get('code')}: {reply.get('message')}")
    return reply


def verify(token: str, jwks: dict, audience: str, scope: str) -> dict:
    """Offline checks: signature, header, registered claims, scope."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as e:
        raise Refused(f"not a JWT: {e}") from e
    if header.get("typ") != TOKEN_TYPE:
        raise Refused(f"token type is {header.get('typ')!r}, not {TOKEN_TYPE!r}")
    kid = header.get("kid")
    match = [k for k in jwks.get("keys", []) if k.get("kid") == kid]
    if not match:
        raise Refused(f"no stepgate signing key has kid {kid!r}")
    key = jwt.PyJWK(match[0])
    try:
        claims = jwt.decode(
            token,
            key=key,
            algorithms=["EdDSA"],
            audience=audience,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "scope"]},
        )
    except jwt.ExpiredSignatureError as e:
        raise Refused("token has expired") from e
    except jwt.InvalidAudienceError as e:
        raise Refused(f"token is not for audience {audience}") from e
    except jwt.InvalidTokenError as e:
        raise Refused(f"token does not verify: {e}") from e
    granted = str(claims.get("scope", "")).split()
    if scope not in granted:
        raise Refused(f"scope {scope} not granted (token carries: {' '.join(granted) or 'none'})")
    return claims


async def check(args) -> dict:
    try:
        token = (sys.stdin.read() if args.token_file == "-" else open(args.token_file, encoding="utf-8").read()).strip()
    except OSError as e:
        raise Unavailable(f"cannot read --token-file {args.token_file}: {e.strerror}") from e
    if not token:
        raise Refused("empty token")

    async def quiet(_e):
        return None

    try:
        nc = await nats.connect(
            servers=[args.nats],
            name="stepgate-py-resource-server",
            connect_timeout=2,
            max_reconnect_attempts=2,
            reconnect_time_wait=0.5,
            error_cb=quiet,
        )
    except Exception as e:  # nats-py raises several kinds here
        raise Unavailable(f"cannot connect to NATS at {args.nats}: {e}") from e
    try:
        jwks = await call(nc, "jwks", {}, args.timeout)
        claims = verify(token, jwks, args.aud, args.scope)
        answer = await call(nc, "token.introspect", {"token": token}, args.timeout)
        if answer.get("active") is not True:
            raise Refused("token is not active: stepgate introspection says it was revoked or has expired")
        if answer.get("jti") != claims.get("jti"):
            raise Refused("introspection describes another token")
        return claims
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Accept or refuse a stepgate step token.")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    parser.add_argument("--aud", required=True, help="the audience this resource server answers to")
    parser.add_argument("--scope", required=True, help="the scope the call needs")
    parser.add_argument("--token-file", required=True, help="file holding the token (`-` for stdin)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each stepgate reply")
    args = parser.parse_args(argv)
    try:
        claims = asyncio.run(check(args))
    except Refused as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1
    except Unavailable as e:
        print(f"cannot check the token: {e}", file=sys.stderr)
        return 2
    print(json.dumps(claims, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
