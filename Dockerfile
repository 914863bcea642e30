# The example application's image: the worker, Flower, the receiver and the provider run it.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY mpstate ./mpstate
COPY celery_app ./celery_app
RUN pip install ".[app]" && useradd --create-home --uid 10001 mpstate
USER mpstate
CMD ["celery", "-A", "celery_app", "worker", "--loglevel=INFO", "--events"]
