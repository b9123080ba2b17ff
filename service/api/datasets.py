"""The Datasets service: upload (validated, all or nothing), metadata, deletion, budgets."""

from __future__ import annotations

import io
import json
import math

import grpc

from ..generation.corpus import parse_corpus
from . import convert
from .errors import ApiError, abort_for
from .gen.privtext.v1 import datasets_pb2, datasets_pb2_grpc
from .state import ServerState


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}", field)


def _check_spec(spec: datasets_pb2.DatasetSpec) -> None:
    if not spec.name.strip():
        raise _invalid("spec.name", "required")
    if len(spec.name) > 200:
        raise _invalid("spec.name", f"at most 200 characters, got {len(spec.name)}")
    if not (math.isfinite(spec.epsilon_cap) and spec.epsilon_cap > 0):
        raise _invalid("spec.epsilon_cap", f"must be a finite number > 0, got {spec.epsilon_cap}")
    if not 0 < spec.delta < 1:
        raise _invalid("spec.delta", f"must be in (0, 1), got {spec.delta}")
    if spec.format not in ("", "jsonl", "csv"):
        raise _invalid("spec.format", f"must be jsonl or csv, got {spec.format!r}")
    if spec.HasField("declared_public_units") and spec.declared_public_units < 1:
        raise _invalid("spec.declared_public_units", f"must be >= 1, got {spec.declared_public_units}")
    names = [n for n in (spec.text_field or "text", spec.label_field, spec.unit_field) if n]
    if len(set(names)) != len(names):
        raise _invalid("spec", f"text_field, label_field and unit_field must be distinct, got {names}")


class DatasetsServicer(datasets_pb2_grpc.DatasetsServicer):
    def __init__(self, state: ServerState):
        self.s = state

    async def UploadDataset(self, request_iterator, context):
        tenant = self.s.tenant(context)
        limits = self.s.settings
        try:
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("payload") != "spec":
                raise _invalid("spec", "the first message of an upload must carry the spec")
            spec = first.spec
            _check_spec(spec)
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
        rows = [{"text": r.text, "label": r.label, "unit": r.unit} for r in corpus.records]
        declared = spec.declared_public_units if spec.HasField("declared_public_units") else None
        info = await self.s.call(context, lambda: self.s.store.create_dataset(
            tenant, spec.name.strip(), text_field=text_field, label_field=spec.label_field or None,
            unit_field=spec.unit_field or None, epsilon_cap=spec.epsilon_cap, delta=spec.delta,
            declared_public_units=declared, records=rows))
        return convert.dataset(info)

    async def GetDataset(self, request, context):
        info = await self.s.call(context, self.s.store.get_dataset, self.s.tenant(context), request.id)
        return convert.dataset(info)

    async def ListDatasets(self, request, context):
        infos = await self.s.call(context, self.s.store.list_datasets, self.s.tenant(context))
        return datasets_pb2.ListDatasetsResponse(datasets=[convert.dataset(i) for i in sorted(infos, key=lambda i: -i.created_at)])

    async def DeleteDataset(self, request, context):
        tenant = self.s.tenant(context)
        await self.s.call(context, self.s.store.get_dataset, tenant, request.id)
        busy = await self.s.call(context, lambda: [j for j in self.s.store.list_unfinished_jobs() if j.dataset_id == request.id])
        if busy:
            await abort_for(context, ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"dataset {request.id} has {len(busy)} unfinished job(s); cancel them first"))
        await self.s.call(context, self.s.store.delete_dataset, tenant, request.id)
        return datasets_pb2.DeleteDatasetResponse(id=request.id)

    async def GetBudget(self, request, context):
        tenant = self.s.tenant(context)

        def read():
            return self.s.store.budget(tenant, request.id), self.s.store.ledger_rows(tenant, request.id)

        b, rows = await self.s.call(context, read)
        return convert.budget(b, rows)
