# Dunlin: `make demo` runs the whole system on one machine, `make test` runs every test.
# Both install what they need (Debian packages, Kubernetes binaries built from the Go module proxy).

GO        ?= go
BIN       ?= bin
TESTFLAGS ?= -count=1 -timeout 30m
BINARIES  := dunlin-controller dunlin-node dunlin-cni

.PHONY: all build deps test unit bench demo generate vet fmt clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES))

deps:
	test/scripts/install-deps.sh

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

# Unit tests only: no servers needed.
unit:
	$(GO) test $(TESTFLAGS) ./internal/... ./translator/ ./translator/ipam/

test: deps vet
	$(GO) test $(TESTFLAGS) ./...

bench: deps
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./test/bench/

# Built, then run, so that Ctrl-C after `make demo DEMOFLAGS=-keep` ends cleanly (go run exits 1 on SIGINT).
demo: deps
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/dunlin-demo ./test/demo
	$(BIN)/dunlin-demo $(DEMOFLAGS)

generate:
	$(GO) generate ./nbmodel ./nodeagent/ovsmodel

clean:
	rm -rf $(BIN)
