# The image deploy/kubernetes/ runs: `ferry` with its services, inference and s3 extras, as a non-root user.
#
#   docker build -t ferry:0.1.0-cpu .                                   # CPU: python:3.11-slim, CPU torch
#   docker build --build-arg BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t ferry:0.1.0-cuda .   # GPU
#
# Pick the CUDA wheel index (cuXYZ) that matches the base's CUDA version and your nodes' driver.
# `docker run IMAGE` runs `ferry serve` (everything); `docker run IMAGE serve encoder` one service.

ARG BASE=python:3.11-slim-bookworm

# The base plus a Python and the user the servers run as. CUDA bases carry no Python: Ubuntu's is used.
FROM ${BASE} AS runtime
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/ferry ferry \
    && mkdir -p /var/lib/ferry \
    && chown ferry:ferry /var/lib/ferry

FROM runtime AS build
# Pinned as the Makefile pins it. From PyTorch's own index: PyPI's Linux wheels bring several GB of CUDA
# libraries even where no GPU will ever be.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python3 -m venv /opt/ferry
ENV PATH=/opt/ferry/bin:$PATH
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdk sdk
COPY services services
COPY inference inference
RUN pip install --no-cache-dir '.[services,inference,s3]'

FROM runtime
COPY --from=build /opt/ferry /opt/ferry
ENV PATH=/opt/ferry/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FERRY_HOST=0.0.0.0 \
    FERRY_DATA_DIR=/var/lib/ferry
WORKDIR /var/lib/ferry
USER 10001:10001
# gRPC, and the CDN (hosted with the encoder).
EXPOSE 50051 8787
ENTRYPOINT ["ferry"]
CMD ["serve"]
