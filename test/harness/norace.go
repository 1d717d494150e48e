//go:build !race

package harness

// RaceEnabled is true in a binary built with -race (see race.go).
const RaceEnabled = false
