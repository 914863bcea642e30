# The example application's image: the worker, Flower, the receiver and the provider run it.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Dependencies first, in a layer of their own: a code change does not reinstall them. The empty
# packages stand in for the code so pip can resolve the project's extras.
COPY pyproject.toml README.md ./
RUN mkdir mpstate celery_app && touch mpstate/__init__.py celery_app/__init__.py \
    && pip install ".[app]" && pip uninstall --yes mpstate && rm -rf mpstate celery_app \
    && useradd --create-home --uid 10001 mpstate
COPY mpstate ./mpstate
COPY celery_app ./celery_app
RUN pip install --no-deps .
USER mpstate
CMD ["celery", "-A", "celery_app", "worker", "--loglevel=INFO", "--events"]
