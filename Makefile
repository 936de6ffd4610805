# The README's two commands: `make demo` (set up + main job) and `make test` (set up + tests).
# Both are idempotent: scripts/setup.sh reuses .venv while pyproject.toml is unchanged.
.PHONY: setup demo test lint

BIN := .venv/bin
MODEL := examples/models/aid_efficientnet_lite0/model.safetensors
SPLIT := examples/models/aid_efficientnet_lite0/split.csv
AID := ../shared/data/aid150

setup:
	@bash scripts/setup.sh

demo: setup
	@mkdir -p out
	$(BIN)/rsscgeo models inspect $(MODEL) > out/model_card.json
	$(BIN)/rsscgeo evaluate $(MODEL) $(AID) --split $(SPLIT) --json out/aid_heldout_metrics.json
	@echo "model card: out/model_card.json; held-out metrics: out/aid_heldout_metrics.json"

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check rsscgeo tests benchmarks
	$(BIN)/ruff format --check rsscgeo
	$(BIN)/mypy
