"""The Generation service: streamed generation and batch jobs over the shared engine.

Every request is charged (DP count once per dataset, then the plan's worst case: for Private
Evolution its T histograms, for SelectCandidates its one histogram) before its first group
reaches the engine or its first vote is computed; a refusal (RESOURCE_EXHAUSTED with a QuotaFailure) therefore
always comes before any record. A client that cancels or whose deadline passes stops its
groups in the engine; its reservation stays charged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets

import grpc

from ..jobs.dataset_job import Admission, decode, prepare, reserved
from ..jobs.records import RecordFilter
from ..jobs.select import select_from_dataset
from ..store.interface import JobInfo
from . import convert
from .errors import ApiError, abort_for
from .gen.privtext.v1 import generation_pb2_grpc
from .selection import select_request, select_response
from .state import ServerState

log = logging.getLogger(__name__)
POLL_SECONDS = 0.2


class GenerationServicer(generation_pb2_grpc.GenerationServicer):
    def __init__(self, state: ServerState):
        self.s = state

    async def _prepare(self, request, context, label: str):
        tenant = self.s.tenant(context)
        try:
            dataset_id, req = convert.job_request(request, self.s.settings)
        except Exception as e:
            await abort_for(context, e)
        prep = await self.s.call(
            context, prepare, self.s.store, tenant, dataset_id, req, label, self.s.settings.count_noise, self.s.server_secret,
            self.s.engine, self.s.settings.batch_rows, subject=f"datasets/{dataset_id}",
        )
        await asyncio.to_thread(self.s.refresh_budget, tenant, dataset_id)
        log.info("%s: dataset %s, %d records, epsilon %.4g reserved (ledger entry %d)", label, dataset_id,
                 prep.plan.records, prep.plan.epsilon, prep.ledger_id)
        return prep

    async def Generate(self, request, context):
        label = f"generate {secrets.token_hex(6)}"
        prep = await self._prepare(request, context, label)
        admission = Admission(self.s.scheduler, label)
        records = RecordFilter(prep.request.pii)
        it = decode(prep, self.s.engine, admission, records)
        index = 0
        loop = asyncio.get_running_loop()
        try:
            while True:
                rec = await loop.run_in_executor(self.s.streams, next, it, None)
                if rec is None:
                    break
                self.s.metrics.record(prep.dataset.id, rec.tokens, rec.released)
                if rec.released:
                    yield convert.record(index, rec)
                    index += 1
        except Exception as e:
            await abort_for(context, e)
        finally:
            admission.cancel()  # client gone, deadline passed, or done: its groups leave the engine

    async def SubmitJob(self, request, context):
        prep = await self._prepare(request, context, f"job {secrets.token_hex(6)}")
        info = await self.s.call(context, self.s.runner.submit, prep)
        return convert.job(info, prep.plan.records, prep.plan.epsilon)

    async def _job(self, context, info: JobInfo):
        total, eps = await self.s.read(context, reserved, self.s.store, info)
        return convert.job(info, total, eps)

    async def GetJob(self, request, context):
        info = await self.s.read(context, self.s.runner.get_job, request.id, self.s.tenant(context))
        return await self._job(context, info)

    async def CancelJob(self, request, context):
        info = await self.s.call(context, self.s.runner.cancel, self.s.tenant(context), request.id)
        return await self._job(context, info)

    async def StreamJobResults(self, request, context):
        tenant = self.s.tenant(context)
        offset = request.offset
        info = await self.s.call(context, self.s.runner.get_job, request.id, tenant)
        total = json.loads(info.request_json)["records"]
        if not 0 <= offset <= total:
            await abort_for(context, ApiError(grpc.StatusCode.OUT_OF_RANGE, f"offset: must be in [0, {total}] (records_total), got {offset}", "offset"))
        while True:
            info = await self.s.read(context, self.s.runner.get_job, request.id, tenant)
            rows = await self.s.read(context, self.s.store.results, request.id, offset, None, tenant)
            for row in rows:
                yield convert.stored_record(offset, json.loads(row))
                offset += 1
            if rows:
                continue
            if info.state == "succeeded":
                return
            if info.state == "failed":
                await abort_for(context, ApiError(grpc.StatusCode.ABORTED, f"job {info.id} failed: {info.message}"))
            if info.state == "cancelled":
                await abort_for(context, ApiError(grpc.StatusCode.CANCELLED, f"job {info.id} was cancelled"))
            await asyncio.sleep(POLL_SECONDS)

    async def SelectCandidates(self, request, context):
        tenant = self.s.tenant(context)
        try:
            ask = select_request(request, self.s.settings)
        except Exception as e:
            await abort_for(context, e)
        label = f"select {secrets.token_hex(6)}"
        sel = await self.s.call(
            context, select_from_dataset, self.s.store, tenant, ask.dataset_id, ask.pool, ask.top, ask.threshold, ask.epsilon,
            ask.sigma, label, self.s.settings.count_noise, self.s.server_secret, subject=f"datasets/{ask.dataset_id}",
        )
        await asyncio.to_thread(self.s.refresh_budget, tenant, ask.dataset_id)
        log.info("%s: dataset %s, %d candidates, epsilon %.4g charged", label, ask.dataset_id, len(ask.pool.texts), sel.plan.epsilon)
        return select_response(ask, sel)
