"""Screenshots for the docs: the Prefect UI's run form of `research-loop`, and MLflow's run comparison.

    python scripts/screenshots.py [--prefect-api URL] [--tracking-uri URI] [--only prefect|mlflow]

Without --prefect-api a throwaway `prefect server` is started and set up with
deployments/pools.py. Without --tracking-uri the MLflow store is
.intern/screenshots/mlflow.db; if it holds no research loop yet, a tiny one (2 experiments)
is run into it first with `ml-intern run` (a few minutes on CPU). Writes
docs/prefect-research-loop-form.png and docs/mlflow-compare.png. Needs Debian's chromium
(installed with apt-get when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CHROMIUM = "/usr/bin/chromium"
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"), "HF_DATASETS_OFFLINE": env.get("HF_DATASETS_OFFLINE", "1"),
                "LITELLM_LOCAL_MODEL_COST_MAP": "True", "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra)
    return env


def ensure_chromium() -> str:
    if not Path(CHROMIUM).exists():
        print("installing chromium (apt-get)...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, stdout=subprocess.DEVNULL)
    return CHROMIUM


def screenshot(url: str, out: Path, budget_ms: int = 20000, size: str = "1400,1000") -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [ensure_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--window-size={size}", f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url]
        subprocess.run(cmd, check=True, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}  <- {url}")


def wait_http(url: str, proc: subprocess.Popen | None, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(url)


def http_json(url: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


# The compare view picks its plot axes itself (the first params that differ, alphabetically);
# this picks the plan's hyperparameters against dev_score, shows only differing params and
# closes the assistant panel, through the page's own React component state.
COMPARE_SETUP_JS = """
(() => {
  const want = %s, metric = %s;
  const byText = (sel, text) => [...document.querySelectorAll(sel)].find(e => e.textContent.trim() === text);
  const closeBtn = document.querySelector('button[data-component-id="mlflow.assistant.chat_panel.close"]');
  if (closeBtn) closeBtn.click();
  const label = byText('label,span,div', 'Show diff only');
  const sw = label && label.parentElement.querySelector('button[role="switch"]');
  if (sw && sw.getAttribute('aria-checked') !== 'true') sw.click();
  const plot = byText('*', 'Parameters:');
  if (!plot) return 'no plot controls';
  const key = Object.keys(plot).find(k => k.startsWith('__reactFiber$'));
  for (let f = plot[key]; f; f = f.return) {
    const s = f.stateNode;
    if (s && s.handleParamsSelectChange && s.setState) {
      const params = want.filter(p => (s.props.allParamKeys || s.props.diffParamKeys || []).includes(p));
      s.setState({selectedParamKeys: params.length ? params : s.state.selectedParamKeys,
                  selectedMetricKeys: (s.props.allMetricKeys || []).includes(metric) ? [metric] : s.state.selectedMetricKeys});
      return 'ok ' + params.join(',');
    }
  }
  return 'no component';
})()
"""
COMPARE_PARAMS = ["plan.hyperparameters.learning_rate", "plan.hyperparameters.max_steps", "plan.dataset.num_examples",
                  "plan.hyperparameters.per_device_batch_size"]


def screenshot_cdp(url: str, out: Path, setup_js: str, wait_for: str, size=(1400, 1000), settle_s: float = 20) -> None:
    """Like screenshot(), but runs `setup_js` in the page first (Chrome DevTools Protocol)."""
    import base64
    import itertools

    from websockets.sync.client import connect

    out.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with tempfile.TemporaryDirectory() as profile:
        cmd = [ensure_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--window-size={size[0]},{size[1]}", f"--remote-debugging-port={port}", "about:blank"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5).read())
                    page = next(t for t in targets if t["type"] == "page")
                    break
                except (OSError, StopIteration):
                    if time.time() > deadline:
                        raise
                    time.sleep(0.5)
            ids = itertools.count(1)
            with connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=30) as ws:
                def call(method, **params):
                    msg_id = next(ids)
                    ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
                    while True:
                        msg = json.loads(ws.recv(timeout=120))
                        if msg.get("id") == msg_id:
                            if "error" in msg:
                                raise RuntimeError(f"{method}: {msg['error']}")
                            return msg.get("result", {})

                def evaluate(expr):
                    return call("Runtime.evaluate", expression=expr, returnByValue=True).get("result", {}).get("value")

                call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False)
                call("Page.navigate", url=url)
                deadline = time.time() + settle_s + 60
                while not evaluate(f"document.body && document.body.innerText.includes({json.dumps(wait_for)})"):
                    if time.time() > deadline:
                        raise TimeoutError(f"{wait_for!r} never appeared on {url}")
                    time.sleep(1)
                time.sleep(3)
                print("page setup:", evaluate(setup_js))
                time.sleep(3)
                data = call("Page.captureScreenshot", format="png")["data"]
            out.write_bytes(base64.b64decode(data))
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}  <- {url}")


@contextmanager
def background(cmd: list[str], env: dict, log: Path):
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


# ------------------------------------------------------------------ Prefect

def prefect_form(api: str | None, tmp: Path) -> None:
    def shoot(api_url: str) -> None:
        dep = http_json(f"{api_url}/deployments/name/research-loop/research-loop")
        ui = api_url.rsplit("/api", 1)[0]
        screenshot(f"{ui}/v2/deployments/deployment/{dep['id']}/run", DOCS / "prefect-research-loop-form.png")

    if api:
        shoot(api.rstrip("/"))
        return
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = quiet_env(PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_API_URL=api_url,
                    PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false")
    with background([PY, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                    env, tmp / "prefect-server.log") as proc:
        wait_http(f"{api_url}/health", proc)
        subprocess.run([PY, str(ROOT / "deployments" / "pools.py"), "--gpus", "2"], env=env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        shoot(api_url)


# ------------------------------------------------------------------ MLflow

TINY_GOAL = {
    "name": "screenshot-demo",
    "benchmark": {"dev_size": 12, "test_size": 12, "max_gen_toks": 8},
    "budget": {"max_experiments": 2, "gpu_hours": 1.0, "wall_time_minutes": 60},
    "search_space": {"max_steps": [2, 3], "batch_sizes": [2], "num_examples": [16, 32], "max_length": 64,
                     "learning_rate": [1e-4, 3e-4]},
    "stop": {"patience": 5, "noise_z": 0.0},
    "use_literature": False,
}


def loop_runs(tracking_uri: str) -> tuple[str, list[str]] | None:
    """The newest research-loop experiment with at least two experiment runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exps = sorted((e for e in client.search_experiments() if e.name.startswith("intern-")),
                  key=lambda e: e.creation_time or 0, reverse=True)
    for exp in exps:
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=50)
        experiments = [r for r in runs if r.data.tags.get("intern.kind") == "experiment"]
        if len(experiments) >= 2:  # experiment runs only: the plot's default axes are the params that differ
            return exp.experiment_id, [r.info.run_id for r in experiments]
    return None


def mlflow_compare(tracking_uri: str | None, tmp: Path) -> None:
    if tracking_uri is None:
        store = ROOT / ".intern" / "screenshots"
        store.mkdir(parents=True, exist_ok=True)
        tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
        if loop_runs(tracking_uri) is None:
            goal_file = tmp / "goal.json"
            goal_file.write_text(json.dumps(TINY_GOAL))
            print("running a tiny research loop (2 experiments) into", tracking_uri, flush=True)
            env = quiet_env(INTERN_TRACKING_URI=tracking_uri, INTERN_WORK_DIR=str(store / "work"),
                            PREFECT_HOME=str(tmp / "prefect-home-loop"))
            env.pop("PREFECT_API_URL", None)
            env.pop("INTERN_EXPERIMENT_DEPLOYMENT", None)
            env.setdefault("HF_HOME", str(ROOT / ".intern" / "hf-home"))
            subprocess.run([str(Path(PY).parent / "ml-intern"), "run", "--goal", str(goal_file)], env=env, cwd=ROOT,
                           check=True)
    found = loop_runs(tracking_uri)
    if found is None:
        raise SystemExit(f"no research loop with two experiment runs in {tracking_uri}")
    experiment_id, run_ids = found
    port = free_port()
    (tmp / "artifacts").mkdir(exist_ok=True)
    env = quiet_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    if tracking_uri.startswith("http"):
        base = tracking_uri.rstrip("/")
        proc_ctx = None
    else:
        base = f"http://127.0.0.1:{port}"
        proc_ctx = background([PY, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
                               "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], env, tmp / "mlflow-server.log")
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])},
                                   quote_via=urllib.parse.quote)
    url = f"{base}/#/compare-runs?{query}"
    js = COMPARE_SETUP_JS % (json.dumps(COMPARE_PARAMS), json.dumps("dev_score"))

    def shoot() -> None:
        screenshot_cdp(url, DOCS / "mlflow-compare.png", js, wait_for="Parallel Coordinates Plot", size=(1400, 1300))

    if proc_ctx is None:
        shoot()
        return
    with proc_ctx as proc:
        wait_http(f"{base}/health", proc)
        shoot()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefect-api", default=None, help="an existing server's API URL (deployed with setup.sh)")
    parser.add_argument("--tracking-uri", default=None, help="an MLflow store or server holding a loop's runs")
    parser.add_argument("--only", choices=["prefect", "mlflow"], default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="intern-shots-"))
    try:
        if args.only in (None, "prefect"):
            prefect_form(args.prefect_api, tmp)
        if args.only in (None, "mlflow"):
            mlflow_compare(args.tracking_uri, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
