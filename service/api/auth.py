"""API keys: tenants from the `x-api-key` metadata, checked by an interceptor.

Keys are compared by their SHA-256 digest in constant time. A missing or wrong key gets
UNAUTHENTICATED; health checks and reflection need none (they reveal no data). With no tenant
configured every caller is the single local tenant; a tenant listed without keys never turns
authentication off (settings refuse it, and here it only means nobody gets in as that tenant).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import grpc

from .handlers import rewrap

API_KEY_HEADER = "x-api-key"
LOCAL_TENANT = "local"
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "pt_" + secrets.token_urlsafe(32)


class ApiKeys:
    def __init__(self, api_keys: dict[str, list[str]]):
        self._tenants = frozenset(api_keys)
        self._by_hash = {h: tenant for tenant, hashes in api_keys.items() for h in hashes}

    @property
    def single_tenant(self) -> bool:
        """No tenant configured (not: no key), so an empty key list never opens the server."""
        return not self._tenants

    def tenant_of(self, metadata) -> str | None:
        """The tenant of a call's metadata, or None if its key is missing or unknown."""
        if self.single_tenant:
            return LOCAL_TENANT
        key = next((v for k, v in (metadata or ()) if k == API_KEY_HEADER), None)
        if not key:
            return None
        digest = hash_key(key if isinstance(key, str) else key.decode())
        found = None
        for h, tenant in self._by_hash.items():  # constant time per stored hash
            if hmac.compare_digest(h, digest):
                found = tenant
        return found


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: ApiKeys):
        self.keys = keys

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        if details.method.startswith(OPEN_SERVICES) or self.keys.tenant_of(details.invocation_metadata) is not None:
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None
        return _deny(handler)


DENIED = f"missing or unknown API key (metadata {API_KEY_HEADER!r})"


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    def unary(_behaviour):
        async def abort(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
        return abort

    def stream(_behaviour):
        async def abort(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
            yield  # pragma: no cover
        return abort

    return rewrap(handler, unary, stream)


def tenant(keys: ApiKeys, context: grpc.aio.ServicerContext) -> str:
    """The caller's tenant (the interceptor already refused calls without one)."""
    t = keys.tenant_of(context.invocation_metadata())
    if t is None:  # pragma: no cover - the interceptor refused it first
        raise PermissionError("unauthenticated")
    return t
