# The example application's image: the worker, Flower, the receiver, the dashboard and the
# simulated provider run it. mpstate is installed as a package (what its wheel holds); the example
# app (celery_app/) is not part of that wheel and is imported from /app (PYTHONPATH).
# For an image of your own package, see deploy/Dockerfile and docs/deployment.md.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONPATH=/app
# Dependencies first, in a layer of their own: a code change does not reinstall them. An empty
# package stands in for the code so pip can resolve the project's extras.
COPY pyproject.toml README.md /src/
RUN mkdir /src/mpstate && touch /src/mpstate/__init__.py \
    && pip install "/src[app]" && pip uninstall --yes mpstate && rm -rf /src/mpstate \
    && useradd --create-home --uid 10001 mpstate
# mpstate itself, installed (not run from the source tree), then the example app beside it.
COPY mpstate /src/mpstate
RUN pip install --no-deps /src && rm -rf /src
WORKDIR /app
COPY celery_app ./celery_app
USER mpstate
CMD ["celery", "-A", "celery_app", "worker", "--loglevel=INFO", "--events"]
