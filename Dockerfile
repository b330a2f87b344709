FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY tracing ./tracing
COPY replay ./replay
COPY auditing ./auditing
COPY meshadmin ./meshadmin
COPY manage.py ./
RUN pip install --no-cache-dir .
EXPOSE 8000 10105 10205 4317 4318
CMD ["python", "-m", "runtime"]
