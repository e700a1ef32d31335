# rltune — every target installs what it needs into .venv first.
SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
ENVPOOL_STAMP := $(VENV)/.installed-envpool
VIDEO_STAMP := $(VENV)/.installed-video
ARGS ?=
# pytest-xdist processes for make test, test-presets and test-full (0: one process, no xdist)
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal
HOST ?= 127.0.0.1
PORT ?= 5000
DASHBOARD_PORT ?= 8080
MLFLOW_ARTIFACTS ?= $(CURDIR)/runs/mlflow-server-artifacts
DASHBOARD_STAMP := $(VENV)/.installed-dashboard
# `make tracking-server`: the MLflow server's backend store. Put a password in the environment, not on the
# command line: MLFLOW_BACKEND_STORE_URI=postgresql://user:pw@host/mlflow make tracking-server
tracking-server: export MLFLOW_BACKEND_STORE_URI ?= postgresql://postgres@127.0.0.1:5432/mlflow
# `make dashboard`: the Optuna storage to show, from RLTUNE_STORAGE as storage=postgres reads it.
dashboard: export RLTUNE_STORAGE ?= sqlite:///$(CURDIR)/runs/optuna.db
# The torch wheel that lies on these machines (CPU build); installed before anything can pull a CUDA build.
TORCH_PIN := torch==2.13.0
# MLflow 3 starts a usage-telemetry client on import; these machines have no route for it.
export MLFLOW_DISABLE_TELEMETRY := true

.DEFAULT_GOAL := help
.PHONY: help install install-envpool install-video evaluate test test-presets test-full sweep worker train replay benchmark report bench bench-envs bench-sweep bench-footprint bench-ceiling bench-step bench-population bench-scores bench-pbt ui tracking-server dashboard ui-screens lint format clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench,envpool]"
	touch $(BENCH_STAMP) $(ENVPOOL_STAMP)

$(ENVPOOL_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,envpool]"
	touch $(ENVPOOL_STAMP)

$(VIDEO_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,video]"
	touch $(VIDEO_STAMP)

install: $(STAMP) ## build .venv (torch CPU first, then rltune with its dev tools); re-run when pyproject changes

install-envpool: $(ENVPOOL_STAMP) ## add the optional EnvPool extra; env.backend = auto (default), gymnasium, vector or envpool

install-video: $(VIDEO_STAMP) ## add the optional video extra (moviepy) for make evaluate ARGS="… video=true"

test: install ## fast test suite (unit tests, small real learning runs)
	$(PYTEST) -m "not slow" $(ARGS)

test-presets: install ## the preset score tests: full-budget learning runs that must reach published scores
	$(PYTEST) -m slow tests/test_presets_slow.py $(ARGS)

test-full: install ## every test, including the long learning runs
	$(PYTEST) $(ARGS)

# `make sweep` with no ARGS: a small real study that finishes in under 10 minutes on 2 cores. ARGS, when
# given, replace these (so presets and algorithms can be chosen freely); conf/tune.yaml has the defaults.
# The demo is its own study and exports its own preset: it never resumes a real ppo_cartpole study nor
# overwrites the committed conf/experiment/ppo_cartpole_tuned.yaml.
SWEEP_DEMO ?= experiment=ppo_cartpole tune.n_trials=20 tune.n_seeds=3 tune.budget_steps=30000 tune.n_workers=2 \
	tune.study_name=ppo_cartpole_demo tune.export_name=ppo_cartpole_demo_tuned
SWEEP_ARGS = $(if $(strip $(ARGS)),$(ARGS),$(SWEEP_DEMO))

sweep: install ## tune with Optuna; no ARGS: a PPO CartPole demo study of 5–10 minutes. make sweep ARGS="algo=sac …"
	$(PY) -m tuner.tune $(SWEEP_ARGS)

worker: install ## join a running study (same ARGS as its sweep) and work until its trial budget is used
	$(PY) -m tuner.worker $(SWEEP_ARGS)

replay: install ## re-train one trial from its stored overrides: make replay ARGS="study=ppo_cartpole trial=3"
	$(PY) -m tuner.replay $(ARGS)

train: install ## train one agent: make train ARGS="env=pendulum algo.learning_rate=1e-3"
	$(PY) -m tuner.train $(ARGS)

evaluate: install ## evaluate a recorded agent: make evaluate ARGS="run=<MLflow run id> episodes=20 [video=true] [register=<name>]"
	$(PY) -m tuner.evaluate $(ARGS)

benchmark: install ## algorithms × envs × seeds in MLflow (resumable); no ARGS: benchmark=quick. make benchmark ARGS="benchmark=classic"
	$(PY) -m tuner.benchmark $(ARGS)

report: install ## tables and plots of the newest benchmark from MLflow: make report ARGS="report.benchmark=classic"
	$(PY) -m tuner.report $(ARGS)

bench: $(BENCH_STAMP) ## throughput against Stable-Baselines3 (same hyperparameters), a row per env backend, prints the ratios
	$(PY) -m bench.throughput $(ARGS)

bench-envs: $(BENCH_STAMP) ## env steps/s of each env backend (gymnasium, vector, envpool), random actions
	$(PY) -m bench.env_backends $(ARGS)

bench-sweep: $(BENCH_STAMP) ## one PPO CartPole study: rltune sequential, population mode, rl-zoo3 (slow: rl-zoo3's study takes longest; --skip zoo leaves it out)
	$(PY) -m bench.sweep_speed $(ARGS)

bench-footprint: install ## make sweep's demo study: its wall time and the bytes of the artifacts it stores in MLflow
	$(PY) -m bench.sweep_footprint $(ARGS)

bench-ceiling: $(BENCH_STAMP) ## one PPO structure's trial time (SB3, rltune, population) vs its fp32 floor: make bench-ceiling ARGS="algo.n_epochs=20"
	$(PY) -m bench.structure_ceiling $(ARGS)

bench-step: $(BENCH_STAMP) ## PPO: the gradient-step time a speed-up over SB3 allows vs what the step and the networks alone take: make bench-step ARGS="--target 3"
	$(PY) -m bench.step_budget $(ARGS)

bench-population: install ## K population members vs K single agents, same preset: final-return IQMs and CIs
	$(PY) -m bench.population_check $(ARGS)

bench-pbt: $(BENCH_STAMP) ## PBT vs TPE, random search and Ray Tune's PBT at equal env steps (held-out IQM, wall time)
	$(PY) -m bench.pbt $(ARGS)

bench-scores: install ## final eval return over 5 seeds for a preset: make bench-scores ARGS="experiment=ppo_cartpole"
	$(PY) -m bench.scores $(ARGS)

ui: install ## serve the MLflow UI for runs/mlflow.db on http://127.0.0.1:5000 (HOST=…, PORT=… to change)
	mkdir -p runs
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db --host $(HOST) --port $(PORT) --workers 1

tracking-server: install ## MLflow server for many workers (PostgreSQL store), 127.0.0.1:5000 (HOST, PORT); workers: tracking=server
	$(PY) -m tuner.postgres MLFLOW_BACKEND_STORE_URI
	mkdir -p $(MLFLOW_ARTIFACTS)
	$(VENV)/bin/mlflow server --artifacts-destination $(MLFLOW_ARTIFACTS) --host $(HOST) --port $(PORT)

$(DASHBOARD_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,dashboard]"
	touch $(DASHBOARD_STAMP)

dashboard: $(DASHBOARD_STAMP) ## optuna-dashboard on RLTUNE_STORAGE (default runs/optuna.db), 127.0.0.1:8080 (DASHBOARD_PORT)
	$(VENV)/bin/optuna-dashboard "$$RLTUNE_STORAGE" --host $(HOST) --port $(DASHBOARD_PORT)

ui-screens: $(DASHBOARD_STAMP) ## screenshots of the MLflow UI and optuna-dashboard after a tiny sweep and benchmark (needs chromium), into bench/results/ui/
	$(PY) -m bench.ui_screens $(ARGS)

lint: install ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## remove .venv and caches (runs/, which holds your MLflow and Optuna records, is kept)
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './runs/*' -exec rm -rf {} +
