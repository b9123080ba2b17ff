# privtext, CPU image (first version: the planner and mechanisms; the engine, server and their
# extras arrive with later issues). Build: docker build -t privtext . ; run: docker run --rm privtext plan --help
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mechanisms ./mechanisms
COPY service ./service
RUN pip install . && useradd --create-home privtext
USER privtext
ENTRYPOINT ["privtext"]
CMD ["--help"]
