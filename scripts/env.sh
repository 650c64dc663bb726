# Source me: offline-safe, quiet defaults for a machine without the Hub (see FIELD_NOTES).
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
export LITELLM_LOCAL_MODEL_COST_MAP=True
export DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90
export TOKENIZERS_PARALLELISM=false
export HF_HOME=${HF_HOME:-$(pwd)/.intern/hf-home}   # caches stay in the checkout
