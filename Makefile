# Dunlin: `make demo` runs the whole system on one machine, `make test` runs every test.
# Both install what they need (Debian packages, Kubernetes binaries built from the Go module proxy).

GO        ?= go
BIN       ?= bin
TESTFLAGS ?= -count=1 -timeout 30m
BINARIES  := dunlin-controller dunlin-node dunlin-cni dunlinctl

# `make test` and `make unit` run the race detector on every package: none is left out. It needs cgo,
# so a C compiler (gcc is on this project's machines; apt-get install gcc otherwise). The end-to-end
# tests also build the programs they start (dunlin-controller, dunlin-node, dunlin-cni, the pod server)
# with -race and fail on their race reports (test/harness: GoBuildFlags, DataRaces). Benchmarks
# (`make bench`, test/bench) run without it: it slows code 2-20x and would falsify what they measure.
# RACE= turns it off, e.g. to compare timings.
RACE      ?= -race

.PHONY: all build deps race-deps test unit bench demo conformance generate vet fmt clean

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
unit: race-deps
	CGO_ENABLED=1 $(GO) test $(RACE) $(TESTFLAGS) ./internal/... ./translator/ ./translator/ipam/

test: deps race-deps vet
	CGO_ENABLED=1 $(GO) test $(RACE) $(TESTFLAGS) ./...

race-deps:
	@if [ -n "$(RACE)" ] && ! command -v "$$($(GO) env CC)" >/dev/null 2>&1; then \
	  echo "the race detector needs cgo and a C compiler ($$($(GO) env CC)): apt-get install gcc, or RACE= to run without it"; exit 1; fi

bench: deps
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./test/bench/

# Built, then run, so that Ctrl-C after `make demo DEMOFLAGS=-keep` ends cleanly (go run exits 1 on SIGINT).
demo: deps
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/dunlin-demo ./test/demo
	$(BIN)/dunlin-demo $(DEMOFLAGS)

# The upstream Kubernetes [sig-network] [Conformance] tests against a cluster of real nodes on this
# machine (test/conformance; about 15 minutes, not part of `make test`). CONFORMANCEFLAGS: -focus,
# -skip, -out, -keep.
conformance: deps
	test/conformance/deps.sh
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/dunlin-conformance ./test/conformance
	$(BIN)/dunlin-conformance $(CONFORMANCEFLAGS)

generate:
	$(GO) generate ./nbmodel ./nodeagent/ovsmodel

clean:
	rm -rf $(BIN)
