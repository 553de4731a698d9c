# vidlstm for GPU training and inference.
#   docker build -t vidlstm .
#   docker run --gpus all --ipc=host -v $PWD/data:/data -v $PWD/outputs:/app/outputs vidlstm \
#       experiment=folder data.root=/data trainer=gpu
# Serve a checkpoint over HTTP on port 8000 (host=0.0.0.0: reachable through the published port):
#   docker run --gpus all -p 8000:8000 -v $PWD/outputs:/app/outputs --entrypoint vidlstm-serve vidlstm \
#       ckpt_path=/app/outputs/folder/<run>/checkpoints/best.ckpt host=0.0.0.0 port=8000
#   curl --data-binary @clip.mp4 http://127.0.0.1:8000/predict
# torch comes from PyTorch's index for the same CUDA version as the base image (TORCH_INDEX matches
# CUDA_IMAGE); the host needs a driver new enough for that CUDA version (check `nvidia-smi`). For an older
# driver: --build-arg CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#         --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    VIDLSTM_ROOT=/app

# System FFmpeg libraries let the optional torchcodec decoder load; decord, PyAV and OpenCV bring their own.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ffmpeg ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid 1000 vidlstm \
    && mkdir -p /app/outputs /app/data \
    && chown -R vidlstm:vidlstm /app /opt/venv

WORKDIR /app
USER 1000:1000

# Dependencies first, from pyproject.toml alone, so source edits do not reinstall torch.
COPY --chown=1000:1000 pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN python -m pip install --upgrade pip \
    && python -m pip install --index-url "${TORCH_INDEX}" torch torchvision \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + extras['torchcodec'] + extras['tensorboard'] + extras['onnx'] + extras['serve']))" \
       > /tmp/requirements.txt \
    && python -m pip install -r /tmp/requirements.txt

COPY --chown=1000:1000 . .
RUN python -m pip install --no-deps -e . \
    && vidlstm-train --help > /dev/null

# vidlstm-serve listens here (publish it with -p 8000:8000 and run it with host=0.0.0.0).
EXPOSE 8000

# Hydra overrides go straight to training; other commands via --entrypoint (vidlstm-predict, vidlstm-evaluate,
# vidlstm-export, vidlstm-stream, vidlstm-serve).
ENTRYPOINT ["vidlstm-train"]
CMD []
