# CPU serving image for a trained medlens bundle.
#
#   docker build -t medlens-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/pneumoniamnist/bundle:/bundle:ro" \
#       -e MEDLENS_API_KEY=change-me medlens-serve
#   open http://localhost:8000/   (API: POST /v1/predict, /v1/explain, /v1/report; GET /v1/model, /health)
#
# Inside the container the server binds 0.0.0.0 so Docker can publish the port; publish it only on a trusted
# network, and set MEDLENS_API_KEY. Use `--backend onnx` with a folder written by `medlens export`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 OMP_NUM_THREADS=2
# OpenCV (albumentations) needs these shared libraries even headless
RUN apt-get update && apt-get install -y --no-install-recommends libglib2.0-0 libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 medlens
WORKDIR /app

# CPU-only torch/torchvision wheels keep the image small (no CUDA libraries); installed as a pair.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[serve,explain,onnx,dicom]"

USER medlens
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
ENTRYPOINT ["medlens", "serve", "/bundle", "--host", "0.0.0.0", "--port", "8000"]
