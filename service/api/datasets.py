"""The Datasets service: upload (validated, all or nothing), metadata, deletion, budgets."""

from __future__ import annotations

import asyncio
import io
import json
import threading

import grpc

from ..generation.corpus import parse_corpus
from ..jobs.corpora import CORPORA
from . import convert
from .errors import ApiError, abort_for
from .gen.privtext.v1 import datasets_pb2, datasets_pb2_grpc
from .state import ServerState


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}", field)


# gRPC ends a server's request stream the same way for a cancelled call as for a complete one;
# the cancellation reaches the handler a moment later. So after the stream ends the handler waits
# CANCEL_SETTLE_SECONDS for it, and refuses an upload whose deadline is closer than
# COMMIT_MARGIN_SECONDS (a deadline cutting the stream ends it within milliseconds of expiring).
CANCEL_SETTLE_SECONDS = 0.1
COMMIT_MARGIN_SECONDS = 0.5


class _Abandoned:
    """Whether an upload's client gave up (cancelled, or too close to its deadline); the store
    asks again inside its transaction, just before commit."""

    def __init__(self, context: grpc.aio.ServicerContext):
        self._context = context
        self._done = threading.Event()  # set when the call ends; before a reply only if cancelled
        context.add_done_callback(lambda _c: self._done.set())

    def __call__(self, margin: float = 0.0) -> bool:
        remaining = self._context.time_remaining()
        return self._done.is_set() or self._context.cancelled() or (remaining is not None and remaining <= margin)


class DatasetsServicer(datasets_pb2_grpc.DatasetsServicer):
    def __init__(self, state: ServerState):
        self.s = state

    async def UploadDataset(self, request_iterator, context):
        tenant = self.s.tenant(context)
        limits = self.s.settings
        abandoned = _Abandoned(context)
        try:
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("payload") != "spec":
                raise _invalid("spec", "the first message of an upload must carry the spec")
            spec = first.spec
            convert.dataset_spec(spec, limits)
            text_field = spec.text_field or "text"
            buf = io.BytesIO()
            mode = None
            n = 0
            async for msg in request_iterator:
                kind = msg.WhichOneof("payload")
                if kind == "spec":
                    raise _invalid("spec", "only the first message may carry the spec")
                if mode is not None and kind != mode:
                    raise _invalid(kind or "payload", "an upload carries records or chunks, not both")
                mode = kind
                if kind == "record":
                    n += 1
                    r = msg.record
                    if len(r.text) > limits.max_record_chars:
                        raise _invalid(f"record {n}", f"text over {limits.max_record_chars} characters (max_record_chars)")
                    if n > limits.max_upload_records:
                        raise _invalid(f"record {n}", f"more than {limits.max_upload_records} records (max_upload_records)")
                    row = {text_field: r.text}
                    if spec.label_field:
                        row[spec.label_field] = r.label or None
                    if spec.unit_field:
                        row[spec.unit_field] = r.unit or None
                    buf.write(json.dumps(row).encode() + b"\n")
                elif kind == "chunk":
                    buf.write(msg.chunk)
                else:
                    raise _invalid("payload", "a message carries no record and no chunk")
                if buf.tell() > limits.max_upload_bytes:
                    raise _invalid("upload", f"over {limits.max_upload_bytes} bytes (max_upload_bytes)")
            if mode is None:
                raise _invalid("upload", "no records")
            fmt = "jsonl" if mode == "record" else (spec.format or "jsonl")
            buf.seek(0)
            # Any bad row fails the upload, naming its line (a record upload's line is the record's number).
            corpus = parse_corpus(buf, fmt, "upload", text_field, spec.label_field or None, spec.unit_field or None,
                                  max_record_chars=limits.max_record_chars, max_bad_fraction=0.0, max_records=limits.max_upload_records)
            del buf
        except Exception as e:
            await abort_for(context, e)
        await asyncio.sleep(CANCEL_SETTLE_SECONDS)  # a cancellation that ended the stream lands here (CancelledError)
        if abandoned(COMMIT_MARGIN_SECONDS):
            await abort_for(context, ApiError(grpc.StatusCode.CANCELLED, "the upload was cancelled or passed its deadline; nothing was stored"))
        rows = [{"text": r.text, "label": r.label, "unit": r.unit} for r in corpus.records]
        declared = spec.declared_public_units if spec.HasField("declared_public_units") else None
        info = await self.s.call(context, lambda: self.s.store.create_dataset(
            tenant, spec.name.strip(), text_field=text_field, label_field=spec.label_field or None,
            unit_field=spec.unit_field or None, epsilon_cap=spec.epsilon_cap, delta=spec.delta,
            declared_public_units=declared, records=rows, abandoned=abandoned))
        return convert.dataset(info)

    async def _check_id(self, context, value: str) -> None:
        try:
            convert.check_id(value, "id", self.s.settings)
        except ApiError as e:
            await abort_for(context, e)

    async def GetDataset(self, request, context):
        await self._check_id(context, request.id)
        info = await self.s.read(context, self.s.store.get_dataset, self.s.tenant(context), request.id)
        return convert.dataset(info)

    async def ListDatasets(self, request, context):
        infos = await self.s.read(context, self.s.store.list_datasets, self.s.tenant(context))
        return datasets_pb2.ListDatasetsResponse(datasets=[convert.dataset(i) for i in sorted(infos, key=lambda i: -i.created_at)])

    async def DeleteDataset(self, request, context):
        tenant = self.s.tenant(context)
        await self._check_id(context, request.id)
        await self.s.call(context, self.s.store.get_dataset, tenant, request.id)
        busy = await self.s.call(context, lambda: [j for j in self.s.store.list_unfinished_jobs() if j.dataset_id == request.id])
        if busy:
            await abort_for(context, ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"dataset {request.id} has {len(busy)} unfinished job(s); cancel them first"))
        await self.s.call(context, self.s.store.delete_dataset, tenant, request.id)
        CORPORA.evict(request.id)  # its parsed records leave memory with it
        return datasets_pb2.DeleteDatasetResponse(id=request.id)

    async def GetBudget(self, request, context):
        """One dataset row and the most recent budget_entries ledger rows, whatever the ledger's length."""
        await self._check_id(context, request.id)
        b = await self.s.read(context, self.s.store.budget, self.s.tenant(context), request.id, self.s.settings.budget_entries)
        return convert.budget(b)
