# Thin wrappers; the work lives in scripts/ and in `mfe`.
.PHONY: demo test build lint fmt deps bench images

demo: deps
	scripts/demo.sh

test: deps
	scripts/test.sh

build:
	cargo build --workspace --all-targets

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo machete

fmt:
	cargo fmt --all

deps:
	scripts/install-deps.sh

bench: deps
	scripts/bench.sh

images: deps
	cargo build -p mfe
	target/debug/mfe infra build-images
