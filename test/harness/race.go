//go:build race

package harness

// RaceEnabled is true in a binary built with -race: BuildBinaries then builds Dunlin's programs with
// -race too, so that `make test` runs the race detector in the controller, the node agents and the
// CNI plugin that the end-to-end tests start, not only in the test binary.
const RaceEnabled = true
