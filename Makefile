# Two commands: `make run` serves the default model, `make test` runs every test.
MODEL_FILE := models/SmolLM2-135M-Instruct.Q4_1.gguf
HOST ?= 127.0.0.1
PORT ?= 8080
PYTHON ?= python3

.PHONY: run test models build bench fmt lint

models:
	scripts/fetch-models.sh smollm2 gemma3 minilm

build:
	cargo build --release -p sluice

run:
	scripts/fetch-models.sh smollm2 minilm
	cargo build --release -p sluice
	target/release/sluice serve --model $(MODEL_FILE) --served-model-name smollm2 --embedding-model models/all-MiniLM-L6-v2 --host $(HOST) --port $(PORT)

test: models
	$(PYTHON) -m pip install -q --disable-pip-version-check -r tests/e2e/requirements.txt
	cargo build -p sluice
	SLUICE_TEST_POSTGRES_URL=$$(scripts/postgres.sh start) SLUICE_REQUIRE_POSTGRES=1 cargo test --workspace
	$(PYTHON) tests/e2e/test_openai_client.py
	$(PYTHON) tests/e2e/test_gateway.py

bench:
	bench/speed.sh

lint:
	cargo clippy --workspace --all-targets -- -D warnings
