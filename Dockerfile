# Two images, one per role:
#   docker build --target bot    -t voxclone-bot .     the Discord bot, talking to workers (WORKER_URLS):
#                                                      no torch, no models (a few hundred MB)
#   docker build --target worker -t voxclone-worker .  the speech worker: CUDA torch, XTTS-v2, Whisper
#                                                      (about 7 GB; the models go to the /models volume)
# The CUDA build of torch from PyPI brings its own CUDA runtime: the host needs only the NVIDIA driver and
# the NVIDIA Container Toolkit. `make run` (everything in one process, no Docker) is unchanged.

FROM python:3.11-slim-bookworm AS base
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    DATABASE_URL=sqlite+aiosqlite:////data/voxclone.db \
    MODEL_CACHE_DIR=/models
# ffmpeg: audio intake (the bot decodes members' uploads; openai-whisper shells out to it);
# libopus0: voice playback; tini: PID 1 that forwards SIGTERM (docker stop) and reaps ffmpeg children.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg libopus0 tini \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 voxclone \
 && mkdir -p /data /models \
 && chown voxclone: /data /models
WORKDIR /app
# Dependencies are installed from pyproject.toml alone (code changes then reuse that layer): an empty
# package stands in for ours, and is replaced by the real code below.
COPY pyproject.toml README.md ./
RUN mkdir -p core bot cogs storage worker \
 && touch core/__init__.py bot/__init__.py cogs/__init__.py storage/__init__.py worker/__init__.py
ENTRYPOINT ["tini", "--", "voxclone"]


# ---- bot: the base dependencies only (discord.py, SQLAlchemy, httpx, numpy): no torch --------------
FROM base AS bot
RUN pip install . && pip uninstall -y voxclone
COPY core ./core
COPY bot ./bot
COPY cogs ./cogs
COPY storage ./storage
COPY worker ./worker
RUN pip install --no-deps . && rm -rf /app/build /app/*.egg-info
USER voxclone
# The bot has no port: it keeps a heartbeat file that `voxclone health` checks (bot/health.py).
ENV HEALTH_FILE=/tmp/voxclone-bot.health
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["voxclone", "health"]
VOLUME ["/data"]
CMD ["bot"]


# ---- worker: the speech stack (CUDA torch, coqui-tts, Whisper, VAD, verification, watermark) --------
FROM base AS worker
# gcc builds webrtcvad and openai-whisper here, and at run time the launchers of the worker's Triton
# kernels on CUDA (worker/kernels/triton_kernels.py, cached in ~/.triton; Python's headers are here).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN pip install '.[worker]' && pip uninstall -y voxclone
COPY core ./core
COPY bot ./bot
COPY cogs ./cogs
COPY storage ./storage
COPY worker ./worker
RUN pip install --no-deps . && rm -rf /app/build /app/*.egg-info
USER voxclone
ENV WORKER_HOST=0.0.0.0 \
    WORKER_PORT=8765
EXPOSE 8765
# /readyz answers 200 once the models are loaded. The first start downloads them (about 2.4 GB:
# XTTS-v2 1.9 GB, Whisper small 0.5 GB) into /models before loading: the start period covers that on a
# slow line (30 minutes at 1.5 MB/s); a ready worker ends it at once.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30m --retries=3 CMD ["voxclone", "health", "--worker"]
VOLUME ["/models"]
CMD ["worker"]
