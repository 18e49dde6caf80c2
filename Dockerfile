# syntax=docker/dockerfile:1
# change-relay: multi-stage build. The builder makes wheels; the runtime image has no compiler, runs as a non-root
# user, and works with a read-only root filesystem (no bytecode is written at run time: it is compiled here).

FROM python:3.11.11-slim-bookworm AS builder
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Dependencies first, so a code change does not rebuild them.
COPY pyproject.toml README.md ./
RUN mkdir relay && touch relay/__init__.py \
    && pip wheel --wheel-dir /wheels . \
    && rm -f /wheels/change_relay-*.whl
COPY relay ./relay
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=builder /wheels /wheels
RUN pip install --no-index --find-links=/wheels /wheels/*.whl \
    && rm -rf /wheels \
    && python -m compileall -q "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --no-create-home --shell /usr/sbin/nologin relay
USER 10001:10001
EXPOSE 8080
# Exec form: the relay is PID 1's only child-free process and receives SIGTERM directly.
ENTRYPOINT ["relay"]
CMD ["run"]
