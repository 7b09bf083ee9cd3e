# seqae daemon, CPU image. Build from the repository root:
#   docker build -f deploy/container/cpu.Dockerfile -t seqae:cpu .
# No `# syntax=` line: the builder's own Dockerfile frontend is used, nothing is pulled for it.
# Build arguments:
#   PYTHON_IMAGE  base image with Python 3.11+ and its venv module (any Debian-like image)
#   TORCH_INDEX   where torch comes from; the default is PyTorch's CPU-only wheel index (about
#                 1.5 GB smaller than PyPI's build, which carries CUDA libraries). Where only
#                 PyPI is reachable: --build-arg TORCH_INDEX=https://pypi.org/simple
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.5.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Layers from the slowest-changing down: torch, then the dependencies named in pyproject.toml,
# then the source. A source change rebuilds only the last layer.
RUN python3 -m venv /opt/seqae/venv \
    && /opt/seqae/venv/bin/pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml /src/
RUN /opt/seqae/venv/bin/python -c "import tomllib; \
deps = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']; \
open('/src/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
    && /opt/seqae/venv/bin/pip install -r /src/requirements.txt
COPY README.md /src/
COPY seqae /src/seqae
COPY daemon /src/daemon
RUN /opt/seqae/venv/bin/pip install --no-deps /src

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 seqae \
    && useradd --system --uid 10001 --gid seqae --home-dir /var/lib/seqae \
        --shell /usr/sbin/nologin seqae \
    && install -d -o seqae -g seqae -m 0750 /var/lib/seqae/models /var/lib/seqae/state \
    && install -d -m 0755 /etc/seqae
COPY --from=build /opt/seqae/venv /opt/seqae/venv
COPY deploy/container/healthcheck.py /opt/seqae/healthcheck.py
ENV PATH=/opt/seqae/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEQAE_PROFILES__MODELS_ROOT=/var/lib/seqae/models \
    SEQAE_STATE_DIR=/var/lib/seqae/state \
    SEQAE_HEALTH__HOST=0.0.0.0 \
    SEQAE_HEALTH__PORT=9108 \
    SEQAE_ENGINE__DEVICE=cpu
VOLUME ["/var/lib/seqae/models", "/var/lib/seqae/state"]
WORKDIR /var/lib/seqae/state
USER 10001:10001
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/seqae/healthcheck.py"]
ENTRYPOINT ["seqae"]
CMD ["daemon", "run", "--config", "/etc/seqae/daemon.toml"]
