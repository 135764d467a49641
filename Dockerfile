# syntax=docker/dockerfile:1
# codegen-workbench for GPU hosts that prefer containers: a CUDA 11.8 runtime image with a bundle
# installed and cgserve as the entry point on port 8978.
#
# NOT BUILT OR TESTED BY THIS PROJECT: its machines reach no image registry. Build it where the
# base image and Ubuntu's packages can be fetched, from a gpu bundle (`cgconvert bundle` copies
# this file into it); the models stay outside the image (.dockerignore) and are mounted:
#
#   cgconvert bundle DEST --target gpu --find-links paddle-wheels/ --variant 2B-multi
#   DOCKER_BUILDKIT=1 docker build -t codegen-workbench:gpu DEST
#   docker save codegen-workbench:gpu | gzip > codegen-workbench-gpu.tar.gz     # carry it over
#
#   docker load < codegen-workbench-gpu.tar.gz                                    # offline side
#   docker run --gpus all -p 8978:8978 -v "$PWD/DEST/models:/models:ro" \
#       codegen-workbench:gpu /models/codegen-2B-multi --dtype float16
#
# Needs the NVIDIA container toolkit on the host (`--gpus all`). cgserve's options can also be
# given as CGSERVE_* variables (docker run -e CGSERVE_API_KEY=...).
FROM nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*

# The bundle is mounted for the install only (no copy of the wheels stays in a layer); install.sh
# checks every checksum but the models', makes /opt/venv and installs with pip --no-index.
RUN --mount=type=bind,target=/bundle PYTHON=python3.11 sh /bundle/install.sh --no-models /opt/venv

ENV CGSERVE_HOST=0.0.0.0 \
    CGSERVE_PORT=8978 \
    CGSERVE_DEVICE=gpu:0
EXPOSE 8978
ENTRYPOINT ["/opt/venv/bin/cgserve"]
