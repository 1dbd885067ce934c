#!/usr/bin/env bash
# Wheels that a GPU machine without internet may lack for jaxscale.train: grain, and of grain's own needs those
# a JAX + PyTorch image usually lacks (array-record, portpicker); tokenizers (the BPE that jaxscale.train trains
# where no tokenizer file is given; its huggingface-hub is needed only to download). Run where pip can download;
# carry DEST across.
#
#   bash tools/gpu_wheels.sh [DEST] [PYTHON_VERSION]     # default .whl and 3.12 (the GPU machine's Python)
#
# Then on the GPU machine, in the repository root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DEST/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
dest=${1:-.whl}
python_version=${2:-3.12}
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$dest" grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 tokenizers==0.23.3
ls -l "$dest"
