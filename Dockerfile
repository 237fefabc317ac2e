# medlens on CPU: serves a trained bundle by default; the same image trains (compose.yaml, service "train").
#
#   docker build -t medlens .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/pneumoniamnist/bundle:/bundle:ro" \
#       -e MEDLENS_API_KEY=change-me medlens
#   open http://localhost:8000/   (API: POST /v1/predict, /v1/explain, /v1/report; GET /v1/model, /health)
#
# Inside the container the server binds 0.0.0.0 so Docker can publish the port; publish it only on a trusted
# network, and set MEDLENS_API_KEY. Use `--backend onnx` with a folder written by `medlens export`.
# Threads follow the container's CPU quota (docker/entrypoint.sh); `-e OMP_NUM_THREADS=N` overrides.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MEDLENS_DATA_DIR=/data MEDLENS_CACHE_DIR=/tmp/medlens-cache
# OpenCV (albumentations) needs these shared libraries even headless
RUN apt-get update && apt-get install -y --no-install-recommends libglib2.0-0 libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 medlens
WORKDIR /app

# 1. Dependencies, in layers that only change with pyproject.toml: CPU-only torch/torchvision wheels (no CUDA
#    libraries, installed as a pair), then medlens's dependencies from a stub package, so a code change does
#    not reinstall them.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision
COPY pyproject.toml README.md ./
RUN mkdir -p src/medlens && touch src/medlens/__init__.py \
    && pip install ".[serve,explain,onnx,dicom]" && pip uninstall -y medlens && rm -rf src build

# 2. The source (no dependency resolution left to do).
COPY src ./src
COPY configs ./configs
RUN pip install --no-deps . && rm -rf build
COPY docker/entrypoint.sh /usr/local/bin/medlens-entrypoint

USER medlens
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
ENTRYPOINT ["medlens-entrypoint"]
CMD ["medlens", "serve", "/bundle", "--host", "0.0.0.0", "--port", "8000"]
