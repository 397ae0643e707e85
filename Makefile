# The two commands: `make demo` and `make test` (both set themselves up).
.PHONY: setup demo test lint
setup:
	bash scripts/setup.sh
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
lint:
	.venv/bin/ruff check . && .venv/bin/snakemake --lint
