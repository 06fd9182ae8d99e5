# One image for both roles:  docker run IMAGE bot   |   docker run --gpus all IMAGE worker
# The CUDA build of torch from PyPI brings its own CUDA runtime; the host needs only the NVIDIA driver
# and the NVIDIA Container Toolkit for the worker.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    DATABASE_URL=sqlite+aiosqlite:////data/voxclone.db \
    MODEL_CACHE_DIR=/models \
    WORKER_HOST=0.0.0.0

# ffmpeg: audio intake; libopus0: voice playback; gcc: builds webrtcvad and openai-whisper, and at run
# time the launchers of the worker's Triton kernels on CUDA (worker/kernels/triton_kernels.py; cached in ~/.triton).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg libopus0 gcc \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 voxclone
WORKDIR /app

# Dependencies first so code changes don't reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir -p core bot cogs storage worker \
 && touch core/__init__.py bot/__init__.py cogs/__init__.py storage/__init__.py worker/__init__.py \
 && pip install '.[worker]' \
 && pip uninstall -y voxclone

COPY core ./core
COPY bot ./bot
COPY cogs ./cogs
COPY storage ./storage
COPY worker ./worker
RUN pip install --no-deps . \
 && mkdir -p /data /models && chown voxclone: /data /models

USER voxclone
VOLUME ["/data", "/models"]
EXPOSE 8765
ENTRYPOINT ["voxclone"]
CMD ["bot"]
