"""Rewrapping a gRPC method handler: what every interceptor that changes behaviour needs."""

from __future__ import annotations

from collections.abc import Callable

import grpc


def rewrap(handler: grpc.RpcMethodHandler, unary: Callable, stream: Callable) -> grpc.RpcMethodHandler:
    """The same method with its behaviour replaced: unary(behaviour) for calls with one response,
    stream(behaviour) for calls with a response stream; serializers kept."""
    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **kw)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **kw)
