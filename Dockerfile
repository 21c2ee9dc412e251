# rejuv in a container: `docker run IMAGE diagnose ...` runs `rejuv diagnose ...`.
#
# CPU (the default):
#   docker build -t rejuv .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/work" -v rejuv-hf:/cache \
#       rejuv diagnose ./base ./sft --weights-only --json report.json
#
# GPU hosts (NVIDIA driver and the NVIDIA Container Toolkit; run with --gpus all): the CUDA
# wheels of torch carry their own CUDA libraries, so the slim base works once torch comes from
# a CUDA index:
#   docker build -t rejuv:cu128 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# or on a CUDA base image (your site's, or NVIDIA's; one without Python gets Debian's/Ubuntu's
# python3 below, which must be 3.10 or newer):
#   docker build -t rejuv:cu128 \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run --rm --gpus all ... rejuv:cu128 diagnose ./base ./sft --device cuda
ARG BASE_IMAGE=python:3.12.11-slim-bookworm
FROM ${BASE_IMAGE}

# The torch `make install` and the GitHub Action pin (tests/test_container.py checks they
# agree), as the CPU wheel: an unpinned install would pull the multi-GB CUDA build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# python:* images have Python with venv; CUDA base images (Ubuntu) have none. Package versions
# are the base image's release's own: pinning them would break the build on every other base.
# hadolint ignore=DL3008
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# A virtual environment owned by root: the non-root user runs rejuv but cannot change it.
ENV VIRTUAL_ENV=/opt/rejuv
ENV PATH="${VIRTUAL_ENV}/bin:${PATH}" \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN python3 -m venv "${VIRTUAL_ENV}" \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# torch is its own layer above: editing rejuv's sources rebuilds only what follows. What the
# wheel build reads: pyproject.toml, README.md (the package's long description), src/ and the
# bundled recipes/; .dockerignore keeps everything else out of the build context.
COPY pyproject.toml README.md /opt/rejuv-src/
COPY src /opt/rejuv-src/src
COPY recipes /opt/rejuv-src/recipes
RUN pip install --no-cache-dir /opt/rejuv-src \
    && rejuv --version

# A fixed uid above the distributions' own (Ubuntu images have uid 1000). /cache (the Hugging
# Face cache: models and datasets fetched by Hub id) and /work (mount your checkpoints here)
# are writable by any uid, so `--user "$(id -u):$(id -g)"` works with host folders.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin rejuv \
    && mkdir -p /cache /work \
    && chmod 1777 /cache /work
ENV HF_HOME=/cache
VOLUME /cache
WORKDIR /work
USER 10001

ENTRYPOINT ["rejuv"]
CMD ["--help"]
