# The two commands: `make demo` and `make test` (both set themselves up).
.PHONY: setup demo test lint
setup:
	bash tools/setup.sh
demo:
	bash tools/demo.sh
test:
	bash tools/test.sh
lint:
	.venv/bin/ruff check . && .venv/bin/snakemake --lint
