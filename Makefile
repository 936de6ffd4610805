# The README's two commands: `make demo` (set up + main job) and `make test` (set up + tests).
# Both are idempotent: scripts/setup.sh reuses .venv while pyproject.toml is unchanged.
.PHONY: setup demo evaluate test test-fast lint

BIN := .venv/bin
MODEL := examples/models/land_use_33_efficientnet_lite0/model.safetensors
SPLIT := examples/models/land_use_33_efficientnet_lite0/split.csv
AID := ../shared/data/aid150
SCENE := examples/scenes/naip_2020_rgbn.tif

setup:
	@bash scripts/setup.sh

# The main job: classify the bundled real NAIP scene with the bundled model.
demo: setup
	@mkdir -p out
	$(BIN)/rsscgeo classify $(SCENE) --out out/naip_2020_labels.gpkg --out out/naip_2020_labels.tif --preview out/naip_2020_map.png --report out/naip_2020_report.html --overwrite
	@echo "open out/naip_2020_report.html in a browser; out/naip_2020_labels.gpkg (styled, with out/naip_2020_labels.qml) and out/naip_2020_labels.tif in QGIS; out/naip_2020_labels.areas.csv holds the area per class"

# The bundled model's accuracy on its held-out split of the real AID images.
evaluate: setup
	@mkdir -p out
	$(BIN)/rsscgeo evaluate $(MODEL) $(AID) --split $(SPLIT) --json out/aid_heldout_metrics.json

test: setup
	$(BIN)/python -m pytest -q

# The tests not marked slow (about 2 minutes): everything but training, clusters, QGIS,
# kill/resume, notebooks and the longer real-scene runs.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check rsscgeo tests benchmarks
	$(BIN)/ruff format --check rsscgeo
	$(BIN)/mypy
