# seqae daemon, CUDA image. Needs the NVIDIA Container Toolkit on the host
# (docker run --gpus all ...). Build from the repository root:
#   docker build -f deploy/container/cuda.Dockerfile -t seqae:cuda .
# No `# syntax=` line: the builder's own Dockerfile frontend is used, nothing is pulled for it.
# TORCH_INDEX defaults to PyTorch's CUDA 12.4 wheel index; PyPI's torch is a CUDA build too
# (--build-arg TORCH_INDEX=https://pypi.org/simple where only PyPI is reachable).
# torch's wheels bring their own CUDA libraries, so the base only needs the
# driver hooks of the nvidia/cuda "base" flavour, not the full toolkit.
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION=2.5.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
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

FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 seqae \
    && useradd --system --uid 10001 --gid seqae --home-dir /var/lib/seqae \
        --shell /usr/sbin/nologin seqae \
    && install -d -o seqae -g seqae -m 0750 /var/lib/seqae/models /var/lib/seqae/state \
    && install -d -m 0755 /etc/seqae
COPY --from=build /opt/seqae/venv /opt/seqae/venv
COPY deploy/container/healthcheck.py /opt/seqae/healthcheck.py
ENV PATH=/opt/seqae/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    SEQAE_PROFILES__MODELS_ROOT=/var/lib/seqae/models \
    SEQAE_STATE_DIR=/var/lib/seqae/state \
    SEQAE_HEALTH__HOST=0.0.0.0 \
    SEQAE_HEALTH__PORT=9108 \
    SEQAE_ENGINE__DEVICE=cuda
VOLUME ["/var/lib/seqae/models", "/var/lib/seqae/state"]
WORKDIR /var/lib/seqae/state
USER 10001:10001
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python3", "/opt/seqae/healthcheck.py"]
ENTRYPOINT ["seqae"]
CMD ["daemon", "run", "--config", "/etc/seqae/daemon.toml"]
